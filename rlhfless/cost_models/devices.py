"""Device-kind names: one spelling per kind, whatever the producer wrote.

Billing events carry whatever the runtime detected ("NVIDIA H100 80GB HBM3" from
``torch.cuda.get_device_name``, "H100", "h100-sxm"); price files are written by people. Both go
through :func:`normalise_device_kind` so that "H100" in a file matches "nvidia-h100" in an event.
"""

from __future__ import annotations

import re

# Families we know. A price file row must use one of these (after normalisation) so that a typo
# ("h10", "l40-s") fails loudly instead of silently never matching any event. To price a new
# device, add its family here (and, if it has memory variants that price differently, a rule in
# normalise_device_kind).
KNOWN_DEVICE_KINDS: frozenset[str] = frozenset(
    {
        "cpu",
        "b200",
        "h200",
        "h100",
        "a100",  # A100 40 GB (p4d, a2-highgpu); the 80 GB part prices differently:
        "a100-80gb",
        "l40s",
        "l40",
        "l4",
        "a10g",
        "a10",
        "t4",
        "v100",
        "mi300x",
    }
)

# Families whose name alone is ambiguous about memory; the 80 GB variant is its own kind.
_MEMORY_VARIANTS: dict[str, dict[str, str]] = {"a100": {"80gb": "a100-80gb", "40gb": "a100"}}
_VENDOR_PREFIXES = ("nvidia", "amd", "instinct", "tesla", "geforce")


def normalise_device_kind(name: str) -> str:
    """Canonical kind for ``name``: lowercase, vendor prefix and form factor dropped.

    "NVIDIA H100 80GB HBM3" -> "h100", "A100-SXM4-80GB" -> "a100-80gb", "L40S" -> "l40s",
    "CPU" -> "cpu". A name whose family is unknown comes back lowercased and dash-joined, so the
    caller can report it (see :data:`KNOWN_DEVICE_KINDS`).
    """
    tokens = [t for t in re.split(r"[\s_\-/]+", name.strip().lower()) if t]
    while tokens and tokens[0] in _VENDOR_PREFIXES:
        tokens = tokens[1:]
    if not tokens:
        return name.strip().lower()
    family = tokens[0]
    if family in _MEMORY_VARIANTS:
        for token in tokens[1:]:
            if token in _MEMORY_VARIANTS[family]:
                return _MEMORY_VARIANTS[family][token]
        return family
    if family in KNOWN_DEVICE_KINDS:
        # The rest (memory size, "sxm5", "pcie", "hbm3") does not change the price class.
        return family
    return "-".join(tokens)


def is_gpu(kind: str) -> bool:
    """Whether slot-seconds of this kind count as GPU-seconds (everything but "cpu")."""
    return normalise_device_kind(kind) != "cpu"
