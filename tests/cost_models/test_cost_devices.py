"""Device-kind names normalise to one spelling."""

from __future__ import annotations

import pytest

from rlhfless.cost_models import is_gpu, normalise_device_kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("H100", "h100"),
        ("NVIDIA H100 80GB HBM3", "h100"),  # torch.cuda.get_device_name
        ("h100-sxm5", "h100"),
        ("NVIDIA A100-SXM4-40GB", "a100"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("a100_80gb", "a100-80gb"),
        ("L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA A10G", "a10g"),
        (" CPU ", "cpu"),
        ("Quantum Q9", "quantum-q9"),  # unknown families pass through, to be reported
    ],
)
def test_normalise(name: str, kind: str) -> None:
    assert normalise_device_kind(name) == kind


def test_cpu_is_not_a_gpu() -> None:
    assert not is_gpu("CPU")
    assert is_gpu("h100")
