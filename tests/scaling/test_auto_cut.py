"""cut = "auto": a per-function cut is planned only where the margin's scenarios say it pays."""

from __future__ import annotations

import pytest

from rlhfless.cost_models import get_model
from rlhfless.scaling import (
    BadScalingSetting,
    FunctionProgress,
    LengthPredictor,
    Scaler,
    ScalingConfig,
    SequenceProgress,
    ThroughputParams,
    TransferParams,
    assign,
    assign_round_robin,
    build_margin,
    choose_k,
    simulate_rollout,
)
from rlhfless.scaling.scaler import (
    Pricing,
    WarmPool,
    expected_cut_point,
    expected_point,
)
from tests.scaling.test_margin import _heavy_epochs, _predictor, _works

PARAMS = ThroughputParams(
    step_seconds=0.018,
    step_seconds_per_seq=0.00008,
    cold_start_seconds=5.0,
    weight_load_seconds=2.0,
    max_batch=256,
)
AWS = get_model("aws")
CUTS = [("per_function", 0.9), ("per_function", 0.95)]


def test_auto_is_the_default_and_bad_thresholds_are_rejected() -> None:
    cfg = ScalingConfig(policy="rlhfless")
    assert cfg.cut == "auto" and cfg.auto_cut_thresholds == (0.9, 0.95)
    for bad in ((0.0,), (1.5,), tuple([0.9] * 9)):
        with pytest.raises(BadScalingSetting, match="auto_cut_thresholds"):
            ScalingConfig(policy="rlhfless", auto_cut_thresholds=bad)
    assert ScalingConfig(policy="rlhfless", auto_cut_thresholds=()).auto_cut_thresholds == ()


def test_nothing_measured_plans_no_cut() -> None:
    pred = LengthPredictor()
    works = _works(pred, 8, 4)
    margin = build_margin(pred, works, [False] * 8, 16, ("lpt",), cuts=CUTS)
    assert margin.cuts == () and margin.scenarios == []
    d = choose_k(works, range(1, 5), PARAMS, AWS, "l40s", within_fraction=0.03, margin=margin)
    assert d.cut == "none" and all(p.cut == "none" for p in d.curve)


def test_a_cut_that_never_fires_changes_nothing() -> None:
    # τ = 1: a function is a candidate only once all its sequences finished: nothing to move.
    epochs = _heavy_epochs(64, 8, 2, seed=2)
    pred = _predictor(epochs[:1])
    works = _works(pred, 64, 8)
    margin = build_margin(pred, works, [True] * 64, 8, cuts=[("per_function", 1.0)])
    for warm in (0, 2):
        a = assign(works, 4, "lpt", PARAMS)
        pricing = Pricing(cost_model=AWS, device_kind="l40s", warm=warm)
        p = expected_point(pricing.evaluate(a, PARAMS), a, works, margin, PARAMS, pricing)
        q = expected_cut_point(p, a, works, margin, "per_function", 1.0, PARAMS,
                               TransferParams(), pricing)  # fmt: skip
        assert q.expected_seconds == pytest.approx(p.expected_seconds, rel=1e-9)
        assert q.expected_usd == pytest.approx(p.expected_usd, rel=1e-9)
        assert (q.cut, q.cut_threshold) == ("per_function", 1.0)


def test_auto_cut_pays_on_the_heavy_tail_within_the_bound() -> None:
    """On the heavy tail the choice includes a cut, and with the true lengths it runs within
    +5% of round robin on all slots, cheaper (warm-pool bill) than the choice without cuts."""
    pool = WarmPool(AWS)
    chose = 0
    for seed in range(2):
        epochs = _heavy_epochs(192, 8, 2, seed=seed)
        pred = _predictor(epochs[:1])
        truth = epochs[1]
        works = _works(pred, 192, 8)
        tokens = [300] * 192
        predicted = [list(w.lengths) for w in works]
        rr = assign_round_robin(works, 8, PARAMS)
        base = simulate_rollout(truth, tokens, rr.groups, PARAMS, predicted=predicted, warm=8,
                                hold_to_end=True)  # fmt: skip
        kw = {"method": "stratified", "within_fraction": 0.03}
        margin = build_margin(pred, works, [True] * 192, 16, ("lpt",), cuts=CUTS)
        d = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", margin=margin, **kw)  # type: ignore[arg-type]
        plain = build_margin(pred, works, [True] * 192, 16, ("lpt",))
        d0 = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", margin=plain, **kw)  # type: ignore[arg-type]
        # Cut points are only tried on candidates within the bound without a cut.
        within = {(p.method, p.k) for p in d0.curve}
        assert all((p.method, p.k) in within for p in d.curve if p.cut != "none")
        assert d.chosen.cut == d.cut

        r, r0 = (
            simulate_rollout(
                truth, tokens, dec.assignment.groups, PARAMS, predicted=predicted,
                cut=dec.cut, threshold=dec.cut_threshold, prewarm=True,  # type: ignore[arg-type]
                shape=pred.shape_ratios(), remaining="siblings",  # as the stage estimates
            )
            for dec in (d, d0)
        )  # fmt: skip
        assert r.tokens_per_sequence == [x for g in truth for x in g]
        assert r.makespan <= 1.05 * base.makespan, (seed, r.makespan / base.makespan)
        if d.cut != "none":
            chose += 1
            assert r.usd(pool, "l40s") < r0.usd(pool, "l40s")
    assert chose >= 1


def test_scaler_plans_cuts_with_the_transfer_given_with_the_plan() -> None:
    scaler = Scaler(ScalingConfig(policy="rlhfless", cut="auto"), slots=4, device_kind="l40s")
    assert scaler.transfer_costs() == TransferParams(
        prefill_tokens_per_s=scaler.throughput.params().prefill_tokens_per_s
    )
    stage = TransferParams(kv_bytes_per_token=512.0, bandwidth_bytes_per_s=1e9,
                           latency_seconds=0.002, prefill_tokens_per_s=900.0)  # fmt: skip
    assert scaler.transfer_costs(stage) is stage


def _progress() -> list[FunctionProgress]:
    return [
        FunctionProgress(function_id="a", assigned=40, finished=39, unfinished=(
            SequenceProgress(seq_id=1, prompt_tokens=10, produced=50, predicted_remaining=5),
        )),
        FunctionProgress(function_id="b", assigned=10, finished=2, unfinished=tuple(
            SequenceProgress(seq_id=10 + i, prompt_tokens=10, produced=5, predicted_remaining=90)
            for i in range(8)
        )),
        FunctionProgress(function_id="c", assigned=10, finished=0, unfinished=tuple(
            SequenceProgress(seq_id=20 + i, prompt_tokens=10, produced=5, predicted_remaining=200)
            for i in range(10)
        )),  # the longest: the horizon a move must stay within
    ]  # fmt: skip


def test_migration_replans_with_the_plans_transfer() -> None:
    # A plan made with KV that never ships (bandwidth 0) is re-planned mid-rollout with it:
    # the cut sequence re-prefills; the same plan with a fast link ships it.
    methods = {}
    for name, link in (("no link", 0.0), ("fast link", 1e12)):
        cfg = ScalingConfig(policy="rlhfless", cut="per_function", cut_threshold=0.9)
        scaler = Scaler(cfg, slots=8, device_kind="l40s", throughput=PARAMS)
        costs = TransferParams(kv_bytes_per_token=512.0, bandwidth_bytes_per_s=link,
                               latency_seconds=0.0, prefill_tokens_per_s=PARAMS.prefill_tokens_per_s)  # fmt: skip
        scaler.plan(list(range(8)), [300] * 8, 4, transfer=costs)
        migration = scaler.migration(_progress())
        assert migration.cut == ["a"] and migration.moves
        methods[name] = {m.method for m in migration.moves}
    assert methods == {"no link": {"reprefill"}, "fast link": {"ship_kv"}}


def test_migration_follows_the_planned_cut() -> None:
    epochs = _heavy_epochs(96, 8, 2, seed=0)
    scaler = Scaler(ScalingConfig(policy="rlhfless", cut="auto"), slots=8, device_kind="l40s",
                    throughput=PARAMS)  # fmt: skip
    ids = list(range(96))
    scaler.observe(ids, epochs[0])
    plan = scaler.plan(ids, [300] * 96, 8)
    assert plan.decision is not None
    assert (plan.cut, plan.cut_threshold) == (plan.decision.cut, plan.decision.cut_threshold)
    progress = _progress()
    m = scaler.migration(progress)
    if plan.cut == "none":
        assert m.empty
    else:
        assert m.cut == ["a"]
    scaler._cut = ("none", 1.0)
    assert scaler.migration(progress).empty
