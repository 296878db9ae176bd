"""The error margin: T(k) and C(k) expected under the predictor's measured error."""

from __future__ import annotations

import random

import pytest

from rlhfless.cost_models import get_model
from rlhfless.scaling import (
    BadScalingSetting,
    ErrorModel,
    GroupWork,
    LengthPredictor,
    Margin,
    Scaler,
    ScalingConfig,
    ThroughputParams,
    build_margin,
    choose_k,
)
from tests.scaling.helpers import lognormal_groups

PARAMS = ThroughputParams(cold_start_seconds=5.0)
AWS = get_model("aws")


def _predictor(history: list[list[list[int]]]) -> LengthPredictor:
    pred = LengthPredictor(alpha=0.5)
    for epoch in history:
        for p, ls in enumerate(epoch):
            pred.observe(p, ls)
    return pred


def _works(pred: LengthPredictor, n: int, g: int) -> list[GroupWork]:
    return [
        GroupWork(group_id=p, prefill_tokens=300, lengths=tuple(pred.predict_group(p, g)))
        for p in range(n)
    ]


def _heavy_epochs(n: int, g: int, epochs: int, seed: int) -> list[list[list[int]]]:
    """Each prompt has its own typical length; 5% of samples are 10x it, at random."""
    rng = random.Random(seed)
    mids = [rng.lognormvariate(5.7, 0.7) for _ in range(n)]
    out = []
    for _ in range(epochs):
        epoch = []
        for m in mids:
            group = []
            for _ in range(g):
                x = rng.lognormvariate(0, 0.4) * m * (10 if rng.random() < 0.05 else 1)
                group.append(max(1, min(4096, int(x))))
            epoch.append(group)
        out.append(epoch)
    return out


def test_exact_predictor_changes_nothing() -> None:
    # Every prompt gives the same lengths each epoch: every scored ratio is 1.
    groups = lognormal_groups(48, 8, seed=3)
    pred = _predictor([groups, groups])
    works = _works(pred, 48, 8)
    margin = build_margin(pred, works, [True] * 48, 16)
    assert margin.source == "seen" and len(margin.scenarios) == 16
    d = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", method="stratified", margin=margin)
    for p in d.curve:
        assert p.expected_seconds == pytest.approx(p.seconds, rel=1e-9)
        assert p.expected_usd == pytest.approx(p.usd, rel=1e-9)


def test_poor_predictions_inflate_the_expected_makespan() -> None:
    epochs = _heavy_epochs(128, 8, 3, seed=1)
    pred = _predictor(epochs[:2])  # the second epoch's predictions are scored
    assert pred.error().rel_max > 0.3
    works = _works(pred, 128, 8)
    margin = build_margin(pred, works, [True] * 128, 16)
    assert margin.source == "seen"
    d = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", method="stratified", margin=margin)
    stratified = [p for p in d.curve if p.method == "stratified"]
    assert all(p.expected_seconds is not None for p in stratified)
    # The point prediction is optimistic for a plan that puts many sequences on few functions.
    assert max(p.expected_seconds / p.seconds for p in stratified) > 1.03  # type: ignore[operator]


def test_margin_picks_more_functions_or_lpt_when_predictions_are_poor() -> None:
    """A k chosen on the point prediction of a poor predictor runs longer than round robin on all
    slots; the margin's choice must not (and it must be a different plan)."""
    from rlhfless.scaling import assign_round_robin, simulate_rollout

    worse = 0
    for seed in range(3):
        epochs = _heavy_epochs(256, 8, 3, seed=seed)
        pred = _predictor(epochs[:1])
        truth = epochs[2]
        for p, ls in enumerate(epochs[1]):  # score a disjoint batch: measured error
            pred.observe(f"other:{p}", ls)
            pred.observe(f"other:{p}", truth[p])
        works = _works(pred, 256, 8)
        tokens = [300] * 256
        rr = assign_round_robin(works, 8, PARAMS)
        base = simulate_rollout(truth, tokens, rr.groups, PARAMS, warm=8).makespan
        kw = {"method": "stratified", "within_fraction": 0.03, "warm": 8}
        plain = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", **kw)  # type: ignore[arg-type]
        margin = build_margin(pred, works, [True] * 256, 16, ("lpt",))
        safe = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", margin=margin, **kw)  # type: ignore[arg-type]
        t_plain = simulate_rollout(truth, tokens, plain.assignment.groups, PARAMS, warm=8).makespan
        t_safe = simulate_rollout(truth, tokens, safe.assignment.groups, PARAMS, warm=8).makespan
        worse += t_plain > 1.05 * base
        assert t_safe <= 1.05 * base, (seed, t_safe / base)
        assert (safe.method, safe.k) != (plain.method, plain.k) or t_plain <= 1.05 * base
    assert worse >= 1, "the point-prediction choice should fail at least once on this workload"


def test_without_measurements_there_are_no_scenarios() -> None:
    pred = LengthPredictor()
    works = _works(pred, 4, 2)
    margin = build_margin(pred, works, [False] * 4, 16, ("lpt",))
    assert margin.scenarios == [] and margin.source == "none"
    assert margin.alternatives == ()  # nothing measured: the configured assignment stays
    d = choose_k(works, range(1, 4), PARAMS, AWS, "l40s", margin=margin)
    assert all(p.expected_seconds is None for p in d.curve)


def test_unscored_seen_prompts_draw_from_split_halves() -> None:
    # One epoch: no prediction of a seen prompt scored yet; each group's halves score each other.
    groups = lognormal_groups(32, 8, seed=4)
    pred = _predictor([groups])
    assert len(pred.split_samples()) == 32 and pred.error().seen == 0
    model = ErrorModel.from_predictor(pred)
    assert model.source(True) == "split" and model.source(False) == "new"
    works = _works(pred, 32, 8)
    scen = model.scenarios(works, [True] * 32, 4, seed=7)
    assert scen == model.scenarios(works, [True] * 32, 4, seed=7)  # seeded: reproducible
    cap = max(max(g) for g in groups)
    assert all(0 <= x <= cap for s in scen for g in s for x in g)
    assert any(s != [list(w.lengths) for w in works] for s in scen)


def test_too_few_groups_to_split_draw_from_the_dataset_spread() -> None:
    groups = lognormal_groups(8, 8, seed=4)  # 8 split-half scores: fewer than MIN_SAMPLES
    pred = _predictor([groups])
    model = ErrorModel.from_predictor(pred)
    assert model.source(True) == "shape"
    works = _works(pred, 8, 8)
    scen = model.scenarios(works, [True] * 8, 4, seed=7)
    assert any(s != [list(w.lengths) for w in works] for s in scen)


def test_fallback_assignment_is_tried_and_ties_keep_the_configured_one() -> None:
    works = [GroupWork(group_id=i, prefill_tokens=100, lengths=(50.0,) * 4) for i in range(8)]
    margin = Margin(alternatives=("lpt",))
    d = choose_k(works, range(1, 5), PARAMS, AWS, "l40s", method="round_robin", margin=margin)
    assert {p.method for p in d.curve} == {"round_robin", "lpt"}
    assert d.method == "round_robin"  # identical plans: the configured method wins the tie
    assert "lpt" in d.render()


def test_within_leaves_out_the_common_cold_start() -> None:
    # One function or two: 2.06 s or 1.93 s of decoding (+7%), within 5% of a makespan that
    # counts the 5 s cold start every candidate pays (+2%), but not of the rollout's own time.
    works = [GroupWork(group_id=i, prefill_tokens=0, lengths=(100.0,) * 16) for i in range(2)]
    params = ThroughputParams(cold_start_seconds=5.0, weight_load_seconds=0.0)
    kw = {"method": "lpt", "within_fraction": 0.05}
    plain = choose_k(works, [1, 2], params, AWS, "l40s", **kw)  # type: ignore[arg-type]
    margined = choose_k(works, [1, 2], params, AWS, "l40s", margin=Margin(), **kw)  # type: ignore[arg-type]
    t1, t2 = (p.seconds for p in plain.curve)
    assert (t1 - 5) / (t2 - 5) > 1.05 > t1 / t2
    assert plain.k == 1 and margined.k == 2


def test_scaler_plans_with_the_margin_by_default() -> None:
    epochs = _heavy_epochs(64, 4, 2, seed=2)
    s = Scaler(ScalingConfig(policy="rlhfless"), slots=4, device_kind="l40s")
    for epoch in epochs:
        s.observe(list(range(64)), epoch)
    plan = s.plan(list(range(64)), [200] * 64, group_size=4)
    assert plan.decision is not None
    assert plan.decision.scenarios == ScalingConfig().margin_scenarios == 16
    assert plan.decision.margin == "seen" and plan.decision.criterion == "within"
    assert plan.decision.within_fraction == 0.03
    assert "E[T]" in plan.decision.render()
    off = Scaler(ScalingConfig(policy="rlhfless", margin_scenarios=0), slots=4, device_kind="l40s")
    off.predictor = s.predictor
    d = off.plan(list(range(64)), [200] * 64, group_size=4).decision
    assert d is not None and d.scenarios == 0 and d.margin == "off"
    # No alternative assignment without a margin; round robin on all slots is always there
    # (the worst-case guard's baseline).
    assert {p.method for p in d.curve} == {"stratified", "round_robin"}
    assert [p.k for p in d.curve if p.method == "round_robin"] == [4]


def test_lam_still_selects_the_price_of_time() -> None:
    assert ScalingConfig().within() == 0.03
    assert ScalingConfig(lam=0.001).within() is None
    assert ScalingConfig(lam=0.001, within_fraction=0.1).within() == 0.1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("margin_scenarios", -1),
        ("margin_scenarios", 1025),
        ("margin_scenarios", 2.5),
        ("margin_scenarios", 8),  # the guard's 0.9 quantile needs 9 draws
        ("margin_fallback", "fastest"),
    ],
)
def test_bad_margin_settings_are_rejected_naming_the_key(field: str, value: object) -> None:
    with pytest.raises(BadScalingSetting, match=field):
        ScalingConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, 9, 16])
def test_margin_off_or_covering_the_guard_is_accepted(n: int) -> None:
    assert ScalingConfig(margin_scenarios=n).margin_scenarios == n


def test_bad_margin_inputs_are_rejected() -> None:
    with pytest.raises(BadScalingSetting, match="margin alternative"):
        Margin(alternatives=("fastest",))
    model = ErrorModel([], shape=[1.0])
    with pytest.raises(BadScalingSetting, match="scenarios"):
        model.scenarios([], [], -1)
