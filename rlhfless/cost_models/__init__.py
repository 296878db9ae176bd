"""Cost models: prices and billing rules (AWS, GCP, serverless, on-prem, your own) and the ledger
that turns a run's billing events into dollars.

    from rlhfless.cost_models import get_model, Ledger, Lifetime
    aws = get_model("aws")
    aws.price("h100", Lifetime.planned(cold_start_seconds=20, busy_seconds=95)).usd
    Ledger(aws, events).result().total.usd

Depends on nothing in ``rlhfless.runtime`` but the pure ``runtime.messages`` (BillingEvent).
"""

from rlhfless.cost_models.accrued import Accrual, accrued_usd
from rlhfless.cost_models.ages import STALE_AFTER_DAYS, stale_warnings
from rlhfless.cost_models.devices import KNOWN_DEVICE_KINDS, is_gpu, normalise_device_kind
from rlhfless.cost_models.errors import (
    BadBillingEvent,
    BillingFileError,
    CostModelError,
    FunctionStillAlive,
    NoInstanceFits,
    PlotUnavailable,
    PriceFileError,
    UnknownDeviceKind,
    UnknownModel,
)
from rlhfless.cost_models.events import latest_time, read_billing_events, write_billing_events
from rlhfless.cost_models.instances import UNUSED_STAGE, price_packed, price_planned
from rlhfless.cost_models.ledger import (
    Breakdown,
    Ledger,
    LedgerResult,
    Serverful,
    died_in_lease,
    price_events,
)
from rlhfless.cost_models.lifetime import Lifetime, merge_intervals
from rlhfless.cost_models.model import Bill, BillingRules, CostModel, PriceRow, TableCostModel
from rlhfless.cost_models.prices import builtin_price_files, load_price_file, model_from_dict
from rlhfless.cost_models.registry import (
    available_models,
    builtin_models,
    get_model,
    resolve_models,
)
from rlhfless.cost_models.report import breakdown_table, comparison_table, plot_costs, results_json

__all__ = [
    "KNOWN_DEVICE_KINDS",
    "STALE_AFTER_DAYS",
    "UNUSED_STAGE",
    "Accrual",
    "BadBillingEvent",
    "Bill",
    "BillingFileError",
    "BillingRules",
    "Breakdown",
    "CostModel",
    "CostModelError",
    "FunctionStillAlive",
    "Ledger",
    "LedgerResult",
    "Lifetime",
    "NoInstanceFits",
    "PlotUnavailable",
    "PriceFileError",
    "PriceRow",
    "Serverful",
    "TableCostModel",
    "UnknownDeviceKind",
    "UnknownModel",
    "accrued_usd",
    "available_models",
    "breakdown_table",
    "builtin_models",
    "builtin_price_files",
    "comparison_table",
    "died_in_lease",
    "get_model",
    "is_gpu",
    "latest_time",
    "load_price_file",
    "merge_intervals",
    "model_from_dict",
    "normalise_device_kind",
    "plot_costs",
    "price_events",
    "price_packed",
    "price_planned",
    "read_billing_events",
    "resolve_models",
    "results_json",
    "stale_warnings",
    "write_billing_events",
]
