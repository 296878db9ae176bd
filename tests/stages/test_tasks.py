import math
import random
import statistics

import msgspec
import pytest

from rlhfless.adapters.tiny import TinyTokenizer
from rlhfless.stages.tasks import (
    Prompt,
    ReasoningGymTask,
    RepeatTask,
    Task,
    TaskError,
    batch_for_step,
    make_task,
    repeat_score,
)


def test_repeat_prompts_are_stable_and_encodable() -> None:
    a, b = RepeatTask(size=64, seed=3), RepeatTask(size=64, seed=3)
    assert isinstance(a, Task)
    assert [a.get(i) for i in range(64)] == [b.get(i) for i in range(64)]
    assert len({a.get(i).id for i in range(64)}) == 64
    tok = TinyTokenizer()
    for i in range(64):
        p = a.get(i)
        n, c = p.text.split("x")
        assert p.answer == c * int(n)
        tok.encode_prompt(p.text)  # every prompt uses only the tiny alphabet


def test_repeat_lengths_are_long_tailed() -> None:
    task = RepeatTask(size=2000, seed=0, median_len=6, sigma=0.8, max_len=47)
    lengths = sorted(len(task.get(i).answer) for i in range(len(task)))
    median = statistics.median(lengths)
    p99 = lengths[int(0.99 * len(lengths))]
    assert 5 <= median <= 7
    assert p99 >= 4 * median  # a tail several times the median, like real rollouts
    assert statistics.mean(lengths) > median  # right-skewed
    assert min(lengths) >= 1 and max(lengths) <= 47


def test_repeat_score_gives_dense_partial_credit() -> None:
    assert repeat_score("aaaa", "aaaa") == 1.0
    assert repeat_score("aaaa", "") == 0.0
    assert repeat_score("aaaa", "bbbb") == 0.5  # right length, wrong characters
    assert repeat_score("aaaa", "aa") == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    assert repeat_score("aaaa", "aaaaaaaa") == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    assert (
        repeat_score("aaaa", "aaab") > repeat_score("aaaa", "aabb") > repeat_score("aaaa", "bbbb")
    )
    task = RepeatTask(size=4)
    p = task.get(0)
    assert task.score(p, p.answer) == 1.0


def test_batches_walk_epochs_in_shuffled_order() -> None:
    task = RepeatTask(size=10, seed=0)
    first_epoch = [p.index for s in range(5) for p in batch_for_step(task, s, 2, seed=1)]
    assert sorted(first_epoch) == list(range(10)) and first_epoch != list(range(10))
    # A batch crossing an epoch boundary, and determinism (resume = same step, same batch).
    crossing = batch_for_step(task, 3, 3, seed=1)
    assert crossing == batch_for_step(task, 3, 3, seed=1)
    second = [p.index for s in range(5, 10) for p in batch_for_step(task, s, 2, seed=1)]
    assert sorted(second) == list(range(10)) and second != first_epoch


def test_sample_uses_the_given_rng() -> None:
    task = RepeatTask(size=50)
    assert task.sample(random.Random(4), 6) == task.sample(random.Random(4), 6)


def test_prompts_travel_as_msgspec() -> None:
    p = RepeatTask(size=2).get(1)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(p), type=Prompt) == p


def test_bad_parameters_and_unknown_task_are_named() -> None:
    with pytest.raises(TaskError, match="median_len"):
        RepeatTask(median_len=0)
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        make_task("nope", 4, 0)
    with pytest.raises(TaskError, match="batch"):
        batch_for_step(RepeatTask(size=4), 0, 0, seed=0)


def test_reasoning_gym_task() -> None:
    pytest.importorskip("reasoning_gym")
    task = make_task("reasoning-gym", 8, 0, dataset="gsm_symbolic")
    p = task.get(3)
    assert p.id == "gsm_symbolic/0/3" and "<answer>" in p.text
    assert task.score(p, f"so <answer>{p.answer}</answer>") == 1.0
    assert task.score(p, "no tags at all") == 0.0
    other = RepeatTask(size=8).get(3)
    with pytest.raises(TaskError, match="does not belong"):
        task.score(other, "<answer>1</answer>")


def test_reasoning_gym_absent_is_a_clear_error() -> None:
    try:
        import reasoning_gym  # noqa: F401
    except ImportError:
        with pytest.raises(TaskError, match="pip install reasoning-gym"):
            ReasoningGymTask()
    else:
        pytest.skip("reasoning-gym is installed")


def test_lognormal_median_is_respected() -> None:
    task = RepeatTask(size=3000, seed=1, median_len=12, sigma=0.5, max_len=200)
    med = statistics.median(len(task.get(i).answer) for i in range(len(task)))
    assert abs(math.log(med / 12)) < 0.15
