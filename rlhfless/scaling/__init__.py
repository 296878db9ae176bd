"""Scaling policy: length prediction, prompt assignment, actor-count choice, cut-and-migrate,
shared-prefix plans. Pure functions and small classes; nothing here starts a process.

    from rlhfless.scaling import Scaler, ScalingConfig
    scaler = Scaler(ScalingConfig(policy="rlhfless", lam=0.001), slots=8, device_kind="l40s")
    plan = scaler.plan(prompt_ids, prompt_tokens, group_size=8)
    print(plan.decision.render())

Depends on ``rlhfless.cost_models`` and the pure ``rlhfless.runtime.messages`` only.
"""

from rlhfless.scaling.assign import (
    METHODS,
    Assignment,
    GroupWork,
    assign,
    assign_lpt,
    assign_pack,
    assign_round_robin,
    assign_stratified,
    function_load,
)
from rlhfless.scaling.config import ScalingConfig
from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting, ScalingError
from rlhfless.scaling.expected import expected_point
from rlhfless.scaling.gang import GangOption, cheapest_gang
from rlhfless.scaling.margin import ErrorModel, Margin, build_margin
from rlhfless.scaling.migrate import (
    FunctionProgress,
    MigrationPlan,
    Move,
    SequenceProgress,
    plan_cut_and_migrate,
    plan_global_cut,
)
from rlhfless.scaling.online import SampleReport, SiblingPredictor, lockstep_reports
from rlhfless.scaling.policy import RolloutPlan, Scaler
from rlhfless.scaling.predictor import (
    LengthPredictor,
    PredictorError,
    expected_remaining,
    length_support,
    spearman,
)
from rlhfless.scaling.prefix import (
    PrefixPlan,
    PrefixRoute,
    SharedPrefix,
    plan_prefix_routes,
    plan_prefixes,
)
from rlhfless.scaling.scaler import (
    CurvePoint,
    ScalingDecision,
    WarmPool,
    choose_k,
    evaluate,
)
from rlhfless.scaling.simulate import SimFunction, SimResult, simulate_rollout
from rlhfless.scaling.throughput import (
    ThroughputModel,
    ThroughputParams,
    decode_seconds,
    decode_timeline,
)
from rlhfless.scaling.transfer import TransferParams, kv_bytes_per_token
from rlhfless.scaling.worst_case import WorstCase, calibrated_scales

__all__ = [
    "METHODS",
    "Assignment",
    "BadScalingInput",
    "BadScalingSetting",
    "CurvePoint",
    "ErrorModel",
    "FunctionProgress",
    "GangOption",
    "GroupWork",
    "LengthPredictor",
    "Margin",
    "MigrationPlan",
    "Move",
    "PredictorError",
    "PrefixPlan",
    "PrefixRoute",
    "RolloutPlan",
    "SampleReport",
    "Scaler",
    "ScalingConfig",
    "ScalingDecision",
    "ScalingError",
    "SequenceProgress",
    "SharedPrefix",
    "SiblingPredictor",
    "SimFunction",
    "SimResult",
    "ThroughputModel",
    "ThroughputParams",
    "TransferParams",
    "WarmPool",
    "WorstCase",
    "assign",
    "assign_lpt",
    "assign_pack",
    "assign_round_robin",
    "assign_stratified",
    "build_margin",
    "calibrated_scales",
    "cheapest_gang",
    "choose_k",
    "decode_seconds",
    "decode_timeline",
    "evaluate",
    "expected_point",
    "expected_remaining",
    "function_load",
    "kv_bytes_per_token",
    "length_support",
    "lockstep_reports",
    "plan_cut_and_migrate",
    "plan_global_cut",
    "plan_prefix_routes",
    "plan_prefixes",
    "simulate_rollout",
    "spearman",
]
