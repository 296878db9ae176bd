"""The shapes of a device profile and a model profile (values: :mod:`.hardware`, :mod:`.calibration`)."""

from __future__ import annotations

import msgspec

GB = 1e9


class GpuProfile(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # what the CLI calls it
    device_kind: str  # what the cost models price
    peak_flops: float  # dense bf16 FLOP/s per GPU (datasheet)
    hbm_bytes_per_s: float  # memory bandwidth per GPU (datasheet)
    memory_bytes: float  # per GPU
    intra_node_bytes_per_s: float  # GPU<->GPU / host<->GPU within a node, one direction
    network_bytes_per_s: float  # one node's network bandwidth to the others
    gpus_per_node: int  # the priced instance's GPUs
    compute_efficiency: float  # achieved / peak FLOP/s of large matmuls (prefill, forward)
    memory_efficiency: float  # achieved / peak bandwidth when reading weights (decode)
    train_efficiency: float  # MFU of training (6 x params x tokens)
    step_overhead_seconds: float = 0.004  # fixed cost of one decode step
    stage_overhead_seconds: float = 0.0  # fixed cost of one stage call (calibrated for cpu-tiny)
    train_overhead_seconds: float = 0.0  # fixed cost of one training call (cpu-tiny)
    # Fixed costs of one layer over one micro-batch (launches, FSDP gathers, Python), fitted on
    # verl's published quickstart step (rlhfless.sim.published): they dominate small models.
    layer_pass_seconds: float = 0.0  # eager forward (reference, values; an eager decode step)
    layer_train_seconds: float = 0.0  # forward + backward + optimiser share
    # A CPU's fixed cost per token and layer of training (small matmuls, dispatch): fitted on
    # this machine's runs (rlhfless.sim.calibration); 0 on a GPU, where the per-micro-batch
    # costs above take its place.
    layer_token_seconds: float = 0.0
    # A CPU trainer's cost per parameter and optimiser step (AdamW, gradient clipping, writing
    # the new weights), fitted likewise; 0 on a GPU (its optimiser hides behind FSDP's traffic).
    step_param_seconds: float = 0.0
    source: str = ""

    @property
    def flops(self) -> float:
        return self.peak_flops * self.compute_efficiency

    @property
    def bandwidth(self) -> float:
        return self.hbm_bytes_per_s * self.memory_efficiency


class ModelProfile(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    tp: int  # GPUs per rollout function (tensor parallel degree); 0: chosen for the GPU
    vocab: int = 0  # vocabulary (the output layer); 0 where unknown
    dtype_bytes: int = 2  # bf16 weights and KV
    source: str = ""

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> float:
        return float(2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes)
