"""GPU and model profiles: datasheet numbers, efficiency factors, and where each comes from.

GPU numbers are NVIDIA datasheet values (dense bf16 tensor FLOP/s without sparsity, memory
bandwidth, memory size) and the node fabric of the cloud instance the cost models price
(``cost_models/prices/aws.toml``). Efficiencies (achieved / datasheet) are fitted to Vidur's
measured operator times where Vidur profiled that GPU or a sibling (:mod:`.vidur_fit`):

* H100: fitted on Vidur's H100 rows (5 models, TP 1-8).
* A100: fitted on Vidur's A100 rows.
* L40S and L4: no Vidur profile; they are Ada GDDR6 PCIe cards like the profiled A40 (Ampere
  GDDR6 PCIe), so the A40 fit is used. An assumption, stated as such.
* ``train_efficiency`` (MFU of FSDP training, incl. recomputation and optimizer) is not in the
  data: 0.40 for H100/A100 (typical reported MFU of FSDP/Megatron 7B-70B runs), 0.35 for the
  PCIe cards (no NVLink for the gradient collectives). An assumption.
* ``step_overhead_seconds``: per-decode-step fixed cost (scheduler, sampling, launches, which a
  weights-only roofline misses): 4 ms, an assumption in line with vLLM's per-step CPU overhead.

``cpu-tiny`` is different: one core of this project's 2-core CPU machine, its rates measured and
its fixed costs fitted on recorded runs of the tiny model and SmolLM2-135M
(``tests/sim/data/measured_*.json``, see :mod:`.calibration`). It is priced as device kind ``cpu``.
"""

from __future__ import annotations

import msgspec

from rlhfless.sim.calibration import cpu_tiny_gpu, smollm2_model, tiny_model
from rlhfless.sim.errors import UnknownName
from rlhfless.sim.profiles import GB, GpuProfile, ModelProfile

__all__ = ["GB", "GPUS", "MODELS", "GpuProfile", "ModelProfile", "get_gpu", "get_model_profile"]

# Output of ``python -m rlhfless.sim.vidur_fit`` (median over Vidur's rows; see that module).
VIDUR_FIT: dict[str, dict[str, float]] = {
    "h100": {"compute_efficiency": 0.705, "memory_efficiency": 0.77},
    "a100": {"compute_efficiency": 0.728, "memory_efficiency": 0.709},
    "a40": {"compute_efficiency": 0.754, "memory_efficiency": 0.761},
}
# Output of ``python benchmarks/sim_calibration.py --fit`` (rlhfless.sim.published.fit on verl's
# quickstart, H100 assumed); software costs, so every GPU profile uses them (an assumption for
# the GPUs other than the H100). tests/sim checks they are still what the fit gives.
LAYER_FIT = {"layer_pass_seconds": 0.003225, "layer_train_seconds": 0.011276}


_ADA = VIDUR_FIT["a40"]
GPUS: dict[str, GpuProfile] = {
    "h100": GpuProfile(
        name="h100",
        device_kind="h100",
        peak_flops=989.4e12,
        hbm_bytes_per_s=3.35e12,
        memory_bytes=80 * GB,
        intra_node_bytes_per_s=450 * GB,  # NVLink 4: 900 GB/s bidirectional
        network_bytes_per_s=400 * GB,  # p5.48xlarge: 3200 Gbps EFA
        gpus_per_node=8,
        train_efficiency=0.40,
        **LAYER_FIT,
        source="NVIDIA H100 SXM5 datasheet; AWS p5.48xlarge; efficiency: Vidur H100 fit",
        **VIDUR_FIT["h100"],
    ),
    "a100": GpuProfile(
        name="a100",
        device_kind="a100",
        peak_flops=312e12,
        hbm_bytes_per_s=1.555e12,  # the 40 GB part AWS p4d (priced "a100") has
        memory_bytes=40 * GB,
        intra_node_bytes_per_s=300 * GB,  # NVLink 3: 600 GB/s bidirectional
        network_bytes_per_s=50 * GB,  # p4d.24xlarge: 400 Gbps EFA
        gpus_per_node=8,
        train_efficiency=0.40,
        **LAYER_FIT,
        source="NVIDIA A100 SXM4 40 GB datasheet; AWS p4d.24xlarge; efficiency: Vidur A100 fit",
        **VIDUR_FIT["a100"],
    ),
    "l40s": GpuProfile(
        name="l40s",
        device_kind="l40s",
        peak_flops=362.05e12,
        hbm_bytes_per_s=864e9,
        memory_bytes=48 * GB,
        intra_node_bytes_per_s=32 * GB,  # PCIe Gen4 x16, no NVLink
        network_bytes_per_s=50 * GB,  # g6e.48xlarge: 400 Gbps
        gpus_per_node=8,
        train_efficiency=0.35,
        **LAYER_FIT,
        source="NVIDIA L40S datasheet; AWS g6e.48xlarge; efficiency: Vidur A40 fit (assumed)",
        **_ADA,
    ),
    "l4": GpuProfile(
        name="l4",
        device_kind="l4",
        peak_flops=121e12,
        hbm_bytes_per_s=300e9,
        memory_bytes=24 * GB,
        intra_node_bytes_per_s=32 * GB,  # PCIe Gen4 x16
        network_bytes_per_s=12.5 * GB,  # g6.48xlarge: 100 Gbps
        gpus_per_node=8,
        train_efficiency=0.35,
        **LAYER_FIT,
        source="NVIDIA L4 datasheet; AWS g6.48xlarge; efficiency: Vidur A40 fit (assumed)",
        **_ADA,
    ),
}

# Qwen2.5 configs (Hugging Face config.json of Qwen/Qwen2.5-*B) and Llama-2-70B (the paper's
# simulated model). tp: GPUs per rollout function; 70B in bf16 (138 GB) needs 8 x 80 GB.
MODELS: dict[str, ModelProfile] = {
    "0.5b": ModelProfile(
        name="0.5b", params=0.494e9, layers=24, hidden=896, kv_heads=2, head_dim=64, tp=1
    ),
    "1.5b": ModelProfile(
        name="1.5b", params=1.54e9, layers=28, hidden=1536, kv_heads=2, head_dim=128, tp=1
    ),
    "3b": ModelProfile(
        name="3b", params=3.09e9, layers=36, hidden=2048, kv_heads=2, head_dim=128, tp=1
    ),
    "7b": ModelProfile(
        name="7b", params=7.62e9, layers=28, hidden=3584, kv_heads=4, head_dim=128, tp=1
    ),
    "14b": ModelProfile(
        name="14b", params=14.7e9, layers=48, hidden=5120, kv_heads=8, head_dim=128, tp=2
    ),
    "32b": ModelProfile(
        name="32b", params=32.5e9, layers=64, hidden=5120, kv_heads=8, head_dim=128, tp=4
    ),
    "70b": ModelProfile(
        name="70b", params=69.0e9, layers=80, hidden=8192, kv_heads=8, head_dim=128, tp=8
    ),
}
for _key, _m in list(MODELS.items()):
    MODELS[_key] = msgspec.structs.replace(
        _m,
        vocab=32000 if _key == "70b" else 151936 if _key in ("0.5b", "1.5b", "3b") else 152064,
        source="Llama-2-70b-hf config.json"
        if _key == "70b"
        else f"Qwen/Qwen2.5-{_key.upper()} config.json",
    )


def get_gpu(name: str) -> GpuProfile:
    key = name.strip().lower()
    if key == "cpu-tiny":
        return cpu_tiny_gpu()
    if key not in GPUS:
        raise UnknownName("gpu", name, [*GPUS, "cpu-tiny"])
    return GPUS[key]


def get_model_profile(name: str) -> ModelProfile:
    key = name.strip().lower()
    if key in ("tiny", "smollm2"):
        return tiny_model() if key == "tiny" else smollm2_model()
    if key not in MODELS:
        raise UnknownName("model", name, [*MODELS, "tiny", "smollm2", "a config.json path"])
    return MODELS[key]
