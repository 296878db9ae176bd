"""Sampled responses with their rewards in the run directory (stages/samples.py): the picked
rows, the log lines, and samples.jsonl written by a real short run of the tiny model."""

import asyncio
import json
import logging
from pathlib import Path

import msgspec
import pytest

from rlhfless.stages.common import task_from_config
from rlhfless.stages.run import Job
from rlhfless.stages.samples import (
    SAMPLES,
    SAMPLES_PER_ITERATION,
    Sample,
    SampleLog,
    Scored,
    pick,
    shown,
)
from rlhfless.stages.tasks import RepeatTask, batch_for_step
from tests.stages.test_pipeline import _cfg


def _scored(prompts: int, group: int) -> Scored:
    task = RepeatTask(size=16)
    ps = [task.get(i) for i in range(prompts)]
    ids = [[i, g] for i in range(prompts) for g in range(group)]
    rewards = [i + g / 10 for i in range(prompts) for g in range(group)]
    return Scored(prompts=ps, response_ids=ids, rewards=rewards)


def test_pick_takes_each_prompts_first_sample() -> None:
    got = pick(3, _scored(6, 4), lambda ids: f"text{ids}")
    assert len(got) == SAMPLES_PER_ITERATION == 4
    # row i * G of prompt i: its first sample, with that sample's own reward
    assert [s.response for s in got] == [f"text{[i, 0]}" for i in range(4)]
    assert [s.reward for s in got] == [0.0, 1.0, 2.0, 3.0]
    assert all(s.iteration == 3 for s in got)
    assert [s.answer for s in got] == [RepeatTask(size=16).get(i).answer for i in range(4)]
    assert len(pick(0, _scored(2, 3), str)) == 2  # fewer prompts than SAMPLES_PER_ITERATION


def test_pick_refuses_a_batch_without_a_reward_per_response() -> None:
    bad = Scored(prompts=RepeatTask(size=2).sample(__import__("random").Random(0), 2),
                 response_ids=[[1], [2]], rewards=[0.5])  # fmt: skip
    with pytest.raises(ValueError, match="2 responses, 1 rewards"):
        pick(0, bad, str)


def test_shown_is_one_line_per_response_and_cut() -> None:
    s = Sample(iteration=4, prompt_id="p", prompt="q", answer="7", response="a\nb " + "x" * 500,
               reward=0.5)  # fmt: skip
    text = shown([s])
    lines = text.splitlines()
    assert lines[0] == "iteration 5: 1 sampled responses"  # 1-based, as the progress line
    assert len(lines) == 2 and "reward 0.50 (answer 7)" in lines[1] and "'a b x" in lines[1]
    assert lines[1].endswith("...'") and len(lines[1]) < 220


def test_sample_log_appends_and_shows_every_n(tmp_path: Path, caplog) -> None:
    log = SampleLog(tmp_path, every=2, decode=str)
    with caplog.at_level(logging.INFO, logger="rlhfless.samples"):
        for it in range(4):
            log.record(it, _scored(2, 2))
    rows = [json.loads(x) for x in (tmp_path / SAMPLES).read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]
    shown_at = [r.getMessage().split(":")[0] for r in caplog.records]
    assert shown_at == ["iteration 2", "iteration 4"]  # every 2nd iteration, counted from 1


@pytest.mark.timeout(180)
def test_a_real_run_writes_samples_with_their_rewards(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.iterations=2", "run.show_samples_every=1")
    job = Job(cfg)
    asyncio.run(job.run())
    rows = [
        msgspec.json.decode(x, type=Sample) for x in (tmp_path / SAMPLES).read_bytes().splitlines()
    ]
    assert [r.iteration for r in rows] == [0] * 4 + [1] * 4
    task = task_from_config(cfg.task, cfg.rollout.max_new_tokens)  # the run's own task
    for r in rows:  # each reward is the verifier's score of the response shown with it
        prompt = task.get(int(r.prompt_id.split("/")[1]))
        assert (r.prompt, r.answer) == (prompt.text, prompt.answer)
        assert r.reward == pytest.approx(task.score(prompt, r.response))
    for it in (0, 1):  # the first prompts of each iteration's own batch
        batch = batch_for_step(task, it, cfg.train.batch_prompts, cfg.run.seed)
        assert [r.prompt_id for r in rows if r.iteration == it] == [p.id for p in batch[:4]]
