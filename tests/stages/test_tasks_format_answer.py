"""The "format-answer" reward of a reasoning-gym task: partial credit from the dataset's own
verifier (reasoning-gym's chain_sum scorer), on hand-made responses."""

import pytest

from rlhfless.stages.common import task_from_config
from rlhfless.stages.config import load_config
from rlhfless.stages.tasks import (
    TAG_CREDIT,
    UNTAGGED_CREDIT,
    TaskError,
    format_answer_score,
    last_number,
    make_task,
)

pytest.importorskip("reasoning_gym")

SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def _task(reward: str = "format-answer"):
    return make_task("reasoning-gym", 16, 0, dataset="chain_sum", dataset_args=SUMS, reward=reward)


def test_partial_credit_orders_tag_and_number() -> None:
    task = _task()
    p = task.get(1)  # "4 - 1 =" -> "3"
    assert p.answer == "3" and p.text.endswith("<answer></answer> tags.")
    right, wrong = p.answer, str(int(p.answer) + 5)
    assert task.score(p, f"4 - 1 = <answer>{right}</answer>") == 1.0
    assert task.score(p, f"The answer is {right}.") == UNTAGGED_CREDIT == 0.5
    assert task.score(p, f"<answer>{wrong}</answer>") == TAG_CREDIT == 0.25
    assert task.score(p, f"4 - 1 is {wrong}") == 0.0  # last number wrong, no tags
    assert task.score(p, "I cannot do arithmetic.") == 0.0  # no number at all
    # the last number counts, not the first: "4 - 1" mentions 4 and 1 before the answer
    assert task.score(p, f"4 - 1 gives {right}") == 0.5
    assert task.score(p, f"{right} or maybe {wrong}") == 0.0


def test_the_verifier_itself_gives_partial_credit_inside_the_score() -> None:
    # chain_sum's scorer: a number that contains the answer gets len(answer) / len(number).
    task = _task()
    p = task.get(1)
    assert task.score(p, "<answer>13</answer>") == pytest.approx(TAG_CREDIT + 0.75 * 0.5)
    assert task.score(p, "so 13") == pytest.approx(UNTAGGED_CREDIT * 0.5)


def test_negative_and_grouped_numbers_are_read_whole() -> None:
    assert last_number("5 - 9 = -4.") == "-4"
    assert last_number("it is 1,000, I think") == "1,000"
    assert last_number("2.5 apples") == "2.5"
    assert last_number("none") is None
    task = _task()
    neg = next(task.get(i) for i in range(len(task)) if task.get(i).answer.startswith("-"))
    assert task.score(neg, f"the result is {neg.answer}") == 0.5
    assert task.score(neg, f"the result is {neg.answer[1:]}") < 0.5  # the sign matters


def test_pure_score_function() -> None:
    def exact(answer: str) -> float:
        return float(answer == "7")

    assert format_answer_score("7", "<answer>7</answer>", exact) == 1.0
    assert format_answer_score(None, "seven is 7", exact) == UNTAGGED_CREDIT
    # empty tags are no answer: they earn nothing, and the last number still counts
    assert format_answer_score("", "<answer></answer>", exact) == 0.0
    assert format_answer_score("", "5 + 2 = 7 <answer></answer>", exact) == UNTAGGED_CREDIT
    assert format_answer_score(" ", "5 + 2 = 6 <answer> </answer>", exact) == 0.0


def test_empty_tags_earn_no_format_credit() -> None:
    # What GRPO found at lr 2e-5: the right sum followed by empty tags (extract_answer gives "").
    task = _task()
    p = task.get(1)  # "4 - 1 =" -> "3"
    hacked = f"4 - 1 = {p.answer} is the final answer inside <answer></answer> inside <answer"
    assert task.score(p, hacked) == UNTAGGED_CREDIT
    assert task.score(p, "4 - 1 = 5 is the final answer inside <answer></answer>") == 0.0


def test_answer_reward_scores_only_the_tags() -> None:
    task = _task("answer")
    p = task.get(1)
    assert task.score(p, f"<answer>{p.answer}</answer>") == 1.0
    assert task.score(p, f"The answer is {p.answer}.") == 0.0
    assert "step by step" in p.text


def test_dataset_args_make_other_prompts_with_other_ids() -> None:
    plain = make_task("reasoning-gym", 4, 0, dataset="chain_sum")
    sums = _task()
    assert plain.get(0).id == "chain_sum/0/0"
    assert sums.get(0).id != plain.get(0).id and sums.get(0).id.startswith("chain_sum,")
    for i in range(len(sums)):  # every prompt is a one-digit sum of two terms
        expr = sums.get(i).text.split(":")[1].split("=")[0].split()
        assert len(expr) == 3 and all(len(t) == 1 for t in expr[::2])


def test_bad_dataset_args_and_reward_are_named() -> None:
    with pytest.raises(TaskError, match="chain_sum.*no_such_arg"):
        make_task("reasoning-gym", 4, 0, dataset="chain_sum", dataset_args={"no_such_arg": 1})
    with pytest.raises(TaskError, match="unknown reward 'exact'"):
        make_task("reasoning-gym", 4, 0, dataset="chain_sum", reward="exact")


def test_the_learning_preset_builds_this_task() -> None:
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "smollm2-learn.toml")
    task = task_from_config(cfg.task, cfg.rollout.max_new_tokens)
    p = task.get(0)
    assert task.score(p, f"<answer>{p.answer}</answer>") == 1.0
    assert task.score(p, f"= {p.answer}") == 0.5
