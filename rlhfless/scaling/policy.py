"""The scaling policy for one job: what the pipeline calls before, during and after a rollout.

    scaler = Scaler(config.scaling, slots=8, device_kind="l40s")
    plan = scaler.plan(prompt_ids, prompt_tokens, group_size=8, warm=n_warm)  # before
    #   start plan.functions functions; function f gets prompts plan.groups[f] (longest first)
    cut = scaler.migration(progress)                                       # during (optional)
    #   stop the functions in cut.cut, resume each cut.moves[i] on its dest with its tokens
    scaler.observe(prompt_ids, lengths, decode=..., prefill=..., cold_starts=...)  # after
    state = scaler.to_dict()   # checkpoint; Scaler.from_dict(state, config, slots, kind)

``policy = "fixed"`` plans ``k`` functions (0 = one per slot) round robin, and never cuts;
``policy = "rlhfless"`` predicts lengths, chooses k and packs groups (see :mod:`.scaler`), with
a margin drawn from the predictor's measured error (see :mod:`.margin`).
Both report predicted makespan and dollars, so the iteration summary can show predicted vs actual.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from rlhfless.cost_models import CostModel, UnknownDeviceKind, get_model
from rlhfless.runtime.messages import BillingEvent
from rlhfless.scaling.assign import GroupWork, assign_round_robin
from rlhfless.scaling.config import ScalingConfig
from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting
from rlhfless.scaling.margin import Margin, build_margin
from rlhfless.scaling.migrate import (
    FunctionProgress,
    MigrationPlan,
    plan_cut_and_migrate,
    plan_global_cut,
)
from rlhfless.scaling.predictor import (
    LengthPredictor,
    PredictorError,
    PromptId,
    check_max_new_tokens,
)
from rlhfless.scaling.prefix import PrefixPlan, plan_prefixes
from rlhfless.scaling.scaler import ScalingDecision, WarmPool, choose_k, evaluate
from rlhfless.scaling.throughput import ThroughputModel, ThroughputParams
from rlhfless.scaling.transfer import TransferParams
from rlhfless.scaling.worst_case import WorstCase, bound_fraction, calibrated_scales


class RolloutPlan(msgspec.Struct, kw_only=True):
    """One rollout's plan. ``groups[f]`` are indices into the batch's prompts, longest first."""

    policy: str
    functions: int
    groups: list[list[int]]
    predicted_seconds: float  # makespan incl. cold starts and weight load
    predicted_usd: float  # under the config's cost model, functions released at their finish
    predicted_lengths: list[float]  # per prompt: predicted mean response length
    cut: str  # "none", "per_function" or "global"
    cut_threshold: float
    prefix: PrefixPlan | None = None
    decision: ScalingDecision | None = None  # the k curve (rlhfless policy)


log = logging.getLogger("rlhfless.scaling")


def warn_above_slots(config: ScalingConfig, slots: int) -> None:
    """Say so, once, where a k setting asks for more functions than the scaler has slots:
    the choice is capped at the slots (``ScalingConfig.k_range`` / ``fixed_k``), which would
    otherwise drop an explicit minimum without a word."""
    asked = [("k", config.k)] if config.policy == "fixed" else [
        ("k_min", config.k_min), ("k_max", config.k_max)
    ]  # fmt: skip
    for name, value in asked:
        if value > slots:
            log.warning(
                "scaling.%s = %d is more than the scaler's %d slots (rollout.functions): "
                "using %d",
                name, value, slots, slots,
            )  # fmt: skip


class ScalerState(msgspec.Struct, kw_only=True):
    predictor: dict
    throughput: dict
    batch_ratios: list[float] = []  # actual / predicted work of earlier batches' seen prompts


BATCH_RATIOS_KEPT = 64  # earlier batches the worst-case guard calibrates its scales from


def batch_work_ratio(
    predictor: LengthPredictor,
    prompt_ids: Sequence[PromptId],
    lengths: Sequence[Sequence[int]],
) -> float | None:
    """Actual over predicted total length of a batch's *seen* prompts (None: none seen): how far
    the whole batch was off, which independent per-group errors do not show."""
    pairs = [(predictor.predict(p), ls) for p, ls in zip(prompt_ids, lengths, strict=True)]
    seen = [(pr * len(ls), sum(ls)) for (pr, ls), p in zip(pairs, prompt_ids, strict=True)
            if predictor.seen(p) and ls]  # fmt: skip
    predicted = sum(a for a, _ in seen)
    return sum(b for _, b in seen) / predicted if seen and predicted > 0 else None


class Scaler:
    """Predictor + throughput model + cost model + config: the per-job scaling policy."""

    def __init__(
        self,
        config: ScalingConfig,
        slots: int,
        device_kind: str = "cpu",
        *,
        throughput: ThroughputParams | None = None,
        transfer: TransferParams | None = None,
        cost_model: CostModel | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        self.config = config
        # The rollout's generation limit: no sample outlives it, so the cut planner's expected
        # remaining lengths are bounded by it (predictor.expected_remaining).
        self.max_new_tokens = check_max_new_tokens(max_new_tokens)
        self.slots = slots
        config.k_range(slots)  # validates slots
        warn_above_slots(config, slots)
        self.device_kind = config.device_kind or device_kind
        self.model = cost_model or get_model(config.cost_model)
        try:
            self.model.rate(self.device_kind)  # fail now, with the known kinds, if unpriced
        except UnknownDeviceKind as exc:
            if not config.device_kind:  # the runtime's own kind: the cost model's words
                raise
            raise BadScalingSetting(
                "device_kind", config.device_kind,
                f"a kind cost model {exc.model!r} prices ({', '.join(exc.known)})",
                "Leave it empty to price the runtime's own device kind.",
            ) from exc  # fmt: skip
        if config.warm_pool:
            self.model = WarmPool(self.model)
        self.predictor = LengthPredictor(
            config.predictor_alpha,
            config.predictor_window,
            config.predictor_default,
            shrink=config.predictor_shrink,
        )
        self.throughput = ThroughputModel(throughput)
        self._transfer = transfer
        # The transfer costs the last plan was made with (plan(transfer=...)): its cuts are
        # executed, and so re-planned by migration(), with the same costs.
        self._plan_transfer: TransferParams | None = None
        self._cut = ("none", 1.0)  # the last plan's cut setting, for migration()
        # Actual / predicted work of recent batches (batch_work_ratio): the worst-case guard's
        # calibrated scales (worst_case.calibrated_scales).
        self.batch_ratios: list[float] = []

    def transfer_costs(self, given: TransferParams | None = None) -> TransferParams:
        """What moving a cut sequence costs: ``given`` (the caller's, with the plan), else the
        constructor's ``transfer``, else the defaults at the measured prefill rate."""
        if given is not None:
            return given
        if self._transfer is not None:
            return self._transfer
        return TransferParams(prefill_tokens_per_s=self.throughput.params().prefill_tokens_per_s)

    # ------------------------------------------------------------------ before a rollout

    def works(
        self,
        prompt_ids: Sequence[PromptId],
        prompt_tokens: Sequence[Sequence[int] | int],
        group_size: int,
    ) -> list[GroupWork]:
        """Predicted work per prompt group (prompt tokens: ids, or just their counts)."""
        if len(prompt_ids) != len(prompt_tokens):
            raise BadScalingInput(
                "Scaler.works", f"{len(prompt_ids)} prompt ids but {len(prompt_tokens)} prompts"
            )
        out = []
        for i, (pid, toks) in enumerate(zip(prompt_ids, prompt_tokens, strict=True)):
            n = toks if isinstance(toks, int) else len(toks)
            lengths = self.predictor.predict_group(pid, group_size)
            out.append(GroupWork(group_id=i, prefill_tokens=n, lengths=tuple(lengths)))
        return out

    def plan(
        self,
        prompt_ids: Sequence[PromptId],
        prompt_tokens: Sequence[Sequence[int]] | Sequence[int],
        group_size: int,
        warm: int = 0,
        transfer: TransferParams | None = None,
    ) -> RolloutPlan:
        """How many functions to start and which prompts each gets.

        ``transfer``: what a cut sequence's move costs in the run that executes the plan (the
        rollout stage's KV bytes, link and prefill rate; bandwidth 0 when KV never ships). Cuts
        are planned, and re-planned by :meth:`migration`, with it; None: :meth:`transfer_costs`.
        """
        cfg = self.config
        self._plan_transfer = transfer
        params = self.throughput.params()
        works = self.works(prompt_ids, prompt_tokens, group_size)
        prefix = None
        if prompt_tokens and not isinstance(prompt_tokens[0], int):
            prefix = plan_prefixes(prompt_tokens, group_size, cfg.prefix_min_len)  # type: ignore[arg-type]
        lengths = [self.predictor.predict(pid) for pid in prompt_ids]
        if cfg.policy == "fixed" or not works:
            self._cut = ("none", 1.0)
            a = assign_round_robin(works, cfg.fixed_k(self.slots), params)
            point = evaluate(a, params, self.model, self.device_kind, 0.0, warm)
            return RolloutPlan(
                policy=cfg.policy,
                functions=a.functions,
                groups=a.groups,
                predicted_seconds=point.seconds,
                predicted_usd=point.usd,
                predicted_lengths=lengths,
                cut="none",
                cut_threshold=1.0,
                prefix=prefix,
            )
        margin = self.margin(prompt_ids, works)
        decision = choose_k(
            works,
            cfg.k_range(self.slots),
            params,
            self.model,
            self.device_kind,
            lam=cfg.lam,
            within_fraction=cfg.within(),
            method=cfg.assign,
            slack=cfg.pack_slack,
            headroom=cfg.pack_headroom,
            warm=warm,
            margin=margin,
            transfer=self.transfer_costs(transfer) if margin is not None and margin.cuts else None,
            worst_case=self.worst_case(),
        )
        self._cut = cfg.cut_in_force((decision.cut, decision.cut_threshold))
        return RolloutPlan(
            policy=cfg.policy,
            functions=decision.functions,
            groups=decision.assignment.groups,
            predicted_seconds=decision.chosen.seconds,
            predicted_usd=decision.chosen.usd,
            predicted_lengths=lengths,
            cut=self._cut[0],
            cut_threshold=self._cut[1],
            prefix=prefix,
            decision=decision,
        )

    def worst_case(self) -> WorstCase | None:
        """The worst-case guard for the next plan (:mod:`~rlhfless.scaling.worst_case`; its
        quantile is the module's default): always on, so that round robin on all slots is
        always a candidate and the bound holds on the scenarios' worst case, not their mean."""
        cfg = self.config
        return WorstCase(
            scales=calibrated_scales(self.batch_ratios),
            fraction=bound_fraction(cfg.within()),
            max_new_tokens=self.max_new_tokens,
        )

    def margin(self, prompt_ids: Sequence[PromptId], works: Sequence[GroupWork]) -> Margin | None:
        """The error margin for a plan of ``works`` (None when ``margin_scenarios`` is 0)."""
        cfg = self.config
        if not cfg.margin_scenarios:
            return None
        alternatives = () if cfg.margin_fallback == "none" else (cfg.margin_fallback,)
        cuts = [("per_function", t) for t in cfg.auto_cut_thresholds] if cfg.cut == "auto" else []
        return build_margin(
            self.predictor,
            works,
            [self.predictor.seen(pid) for pid in prompt_ids],
            cfg.margin_scenarios,
            alternatives,
            cuts=cuts,
            max_new_tokens=self.max_new_tokens,
        )

    # ------------------------------------------------------------------ during a rollout

    def cut_in_force(self) -> tuple[str, float]:
        """The cut this rollout runs, (setting, τ): the last plan's under ``cut = "auto"``."""
        return self.config.cut_in_force(self._cut)

    def migration(self, progress: Sequence[FunctionProgress]) -> MigrationPlan:
        """Which functions to cut now and where their unfinished sequences go (maybe nothing).

        ``progress`` carries each unfinished sequence's remaining length as the stage estimates
        it online (:class:`~rlhfless.scaling.online.SiblingPredictor`), so the no-extension
        guard's horizon is the latest finish those estimates predict: a move must end by the
        time the rollout would end anyway, as the estimates see it now. (The plan's uncut
        makespan, which the horizon once reached, is a plan-time guess: on a batch shorter
        than predicted it let moves end long after everything else.)
        """
        cfg = self.config
        cut, tau = self.cut_in_force()
        if cfg.policy == "fixed" or cut == "none":
            return MigrationPlan(policy="none")
        if cut == "global":
            return plan_global_cut(progress, tau, self.transfer_costs(self._plan_transfer))
        params = self.throughput.params() if cfg.cut_guard or cfg.cut == "auto" else None
        transfer = self.transfer_costs(self._plan_transfer)
        return plan_cut_and_migrate(progress, tau, transfer, params)

    # ------------------------------------------------------------------ after a rollout

    def observe(
        self,
        prompt_ids: Sequence[PromptId],
        lengths: Sequence[Sequence[int]],
        *,
        decode: Iterable[tuple[int, int, float]] = (),
        prefill: Iterable[tuple[int, float]] = (),
        cold_starts: Iterable[float] = (),
        weight_loads: Iterable[float] = (),
        billing_events: Iterable[BillingEvent] = (),
    ) -> None:
        """Record a finished rollout.

        ``lengths[i]``: response lengths of prompt i's samples. ``decode``: per function call,
        ``(steps, tokens, seconds)`` (steps = its longest response when all ran in one batch).
        ``prefill``: ``(tokens, seconds)``. ``billing_events``: the rollout functions' events
        (their cold starts). Predictions for these prompts are compared before updating.
        """
        if len(prompt_ids) != len(lengths):
            raise BadScalingInput(
                "Scaler.observe", f"{len(prompt_ids)} prompt ids but {len(lengths)} length lists"
            )
        ratio = batch_work_ratio(self.predictor, prompt_ids, lengths)
        if ratio is not None:
            self.batch_ratios = [*self.batch_ratios, ratio][-BATCH_RATIOS_KEPT:]
        for pid, ls in zip(prompt_ids, lengths, strict=True):
            self.predictor.observe(pid, ls)
        for steps, tokens, seconds in decode:
            self.throughput.observe_decode(steps, tokens, seconds)
        for tokens, seconds in prefill:
            self.throughput.observe_prefill(tokens, seconds)
        for seconds in cold_starts:
            self.throughput.observe_cold_start(seconds)
        for seconds in weight_loads:
            self.throughput.observe_weight_load(seconds)
        for event in billing_events:
            self.throughput.observe_billing_event(event)

    def remaining(self, prompt_id: PromptId, produced: float) -> float:
        """Expected tokens still to come for a sample of ``prompt_id`` that has produced
        ``produced``: the ``predicted_remaining`` to put in a migration plan's progress."""
        return self.predictor.remaining(prompt_id, produced)

    def prediction_error(self, last: int | None = None) -> PredictorError:
        return self.predictor.error(last)

    # ------------------------------------------------------------------ checkpoints

    def to_dict(self) -> dict:
        state: dict = msgspec.to_builtins(  # a struct's builtins are a dict
            ScalerState(
                predictor=self.predictor.to_dict(),
                throughput=self.throughput.to_dict(),
                batch_ratios=list(self.batch_ratios),
            )
        )
        return state

    @classmethod
    def from_dict(
        cls,
        data: Mapping,
        config: ScalingConfig,
        slots: int,
        device_kind: str = "cpu",
        **kwargs: object,
    ) -> Scaler:
        state = msgspec.convert(data, ScalerState)
        out = cls(config, slots, device_kind, **kwargs)  # type: ignore[arg-type]
        out.predictor = LengthPredictor.from_dict(state.predictor)
        out.throughput = ThroughputModel.from_dict(state.throughput)
        out.batch_ratios = list(state.batch_ratios)
        return out
