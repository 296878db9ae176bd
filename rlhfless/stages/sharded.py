"""The policy trainer as a gang of functions: FSDP2 (``fully_shard``) over ``train.slots`` ranks;
PPO's critic (``train.critic_slots``) and the reference (``train.reference_slots``) likewise.

    controller ──step(batch)──▶ rank 0..N-1 (a gang: rlhfless.runtime.gang)
                                 each: its share of the micro-batches, forward + backward,
                                 gradients reduce-scattered (summed) by FSDP, AdamW on its shard

Every rank receives the whole batch (token ids are small) and cuts it into the same
micro-batches as one process would; rank r runs micro-batches r, r+N, r+2N, ... A rank whose
share ran out runs a pass of weight 0 while the others still run one, because each forward and
backward is collective (parameters all-gathered, gradients reduce-scattered). The trainer sums
unnormalised gradients and scales by the whole batch's units, which every rank knows (it has
the batch), and FSDP *sums* across ranks (divide factor 1), so the update is the one process's
update up to float summation order. Parameters, gradients and AdamW's moments are sharded:
each rank holds 1/N of them.

The hand-over state and checkpoints are written with ``torch.distributed.checkpoint``
(stages/sharded_state.py) and read at any gang size, or by one process; a gang also reads a
single process's state. Published weights are gathered one parameter at a time
(``full_tensor``) and kept by rank 0 only: no process holds two full copies.

Mixed precision (bf16 compute, fp32 reduce and master weights) only where the device has bf16
(a CUDA GPU); on the CPU the trainer stays in float32. The collectives are gloo on the CPU,
NCCL on CUDA, bound as the runtime's gangs bind them (docs/gangs.md: unauthenticated, loopback
on one machine).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from rlhfless.adapters.hf import HFEngine, ValueModel, load_tokenizer
from rlhfless.runtime.rendezvous import member
from rlhfless.stages.common import DTYPES, function_device
from rlhfless.stages.config import TrainConfig
from rlhfless.stages.critic import CriticActor
from rlhfless.stages.handover import HandOver, StateDir
from rlhfless.stages.reference import ReferenceActor
from rlhfless.stages.sharded_state import ShardedHandOver, ShardedStateDir
from rlhfless.stages.trainer import TrainerActor

log = logging.getLogger("rlhfless.sharded")


class _Rank:
    """One member of a gang: the process group, and this machine's cores shared."""

    device: torch.device
    rank: int
    world: int

    def _join(self) -> None:
        """The runtime set torch's env:// variables (loopback by default)."""
        self.device = function_device()
        self.me = member()
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.state_group = dist.new_group(backend="gloo")  # the write behind's own collectives

    def set_threads(self, threads: int) -> int:
        """``threads`` for the whole gang: the ranks share this machine's cores."""
        torch.set_num_threads(max(1, threads // self.world))
        return torch.get_num_threads() * self.world


class _GangRank(_Rank):
    """What every rank of a training gang does alike: join the process group, take its share
    of the micro-batches, add up the ranks' statistics, and hold its shards of the model and
    AdamW with a DCP hand-over state (stages/sharded_state.py) that any gang size reads."""

    cfg: TrainConfig
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    handover: HandOver

    @property
    def version(self) -> int:
        return self.handover.version

    def _shard_with_state(self, state_dir: str, make_opt: Callable[[Any], Any]) -> None:
        """Shard ``self.model`` (FSDP2), make its optimiser with ``make_opt(params)`` and load
        the state directory's state at whatever size (or by one process) it was written."""
        state = ShardedStateDir(state_dir, self.state_group)
        version, plain_optim = self._load_plain(state, make_opt)
        shard(self.model, self.cfg, self.device)
        self.opt = make_opt(self.model.parameters())
        if plain_optim is not None:  # one process's AdamW state, now sharded like the model
            set_optimizer_state_dict(
                self.model, self.opt, plain_optim, options=StateDictOptions(full_state_dict=True)
            )
        elif state.exists():
            version = state.load(self.model, self.opt)
        self.handover = ShardedHandOver(state_dir, self.model, self.opt, state, version)

    def _load_plain(
        self, state: ShardedStateDir, make_opt: Callable[[Any], Any]
    ) -> tuple[int, dict[str, Any] | None]:
        """A state directory that one process wrote (slots was 1): every rank reads it whole
        into the model before sharding; AdamW's state comes back keyed by parameter name, to
        be sharded after the model. (0, None) when there is none."""
        if not state.written_by_one():
            return 0, None
        plain = make_opt(self.model.parameters())
        version = StateDir(state.path).load(self.model, plain)
        optim = get_optimizer_state_dict(
            self.model, plain, options=StateDictOptions(full_state_dict=True)
        )
        return version, optim

    def _share(self, parts: list[list[int]]) -> list[tuple[list[int], bool]]:
        """Micro-batches rank, rank + N, ...; as many passes on every rank (the collectives
        pair up), the missing ones of weight 0."""
        rounds = -(-len(parts) // self.world)
        out = []
        for r in range(rounds):
            i = r * self.world + self.rank
            out.append((parts[i], True) if i < len(parts) else (parts[0], False))
        return out

    def _summed(self, values: list[float]) -> list[float]:
        """The batch's statistics: each rank has the sums of its own micro-batches. On the
        state group: no write behind runs during an update (the step lands it first)."""
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.state_group)
        return [float(v) for v in t]

    def save_checkpoint(self, path: str) -> str:
        self.handover.wait()
        ShardedStateDir(path, self.state_group, durable=True).save(
            self.model, self.opt, self.version
        )
        return path


class ShardedTrainerActor(_GangRank, TrainerActor):
    """One rank of the sharded policy trainer; the same methods as :class:`TrainerActor`."""

    def __init__(
        self, model_dir: str, train: dict[str, Any], state_dir: str, dtype: str = "float32"
    ) -> None:
        self.cfg = msgspec.convert(train, TrainConfig)
        self._join()
        self.engine = HFEngine.load(model_dir, dtype=DTYPES[dtype], device=self.device)
        self.model = self.engine.model.train()
        self.pad_id = self.engine.tokenizer.pad_id
        cfg = self.cfg
        self._shard_with_state(
            state_dir, lambda ps: torch.optim.AdamW(ps, lr=cfg.lr, weight_decay=cfg.weight_decay)
        )
        self._stream = None

    def _check_open_groups(self) -> None:
        # Which samples wait for their group (a token outside the clip range) is each rank's
        # own finding, and the ranks' passes must pair up in the collectives.
        raise ValueError("a sharded trainer (train.slots > 1) trains complete groups only")

    def weights(self, file_dir: str | None = None, file_above_bytes: int = 0) -> dict[str, Any]:
        """Whole weights on rank 0 (gathered one parameter at a time; the other ranks keep
        nothing), as :meth:`TrainerActor.weights` returns them; then the hand-over state of
        this version is written behind."""
        self.handover.wait()
        t0 = time.perf_counter()
        state = gather_full(self.model, keep=self.rank == 0)
        gathered = time.perf_counter() - t0
        out: dict[str, Any] = {"version": self.version, "gather_seconds": gathered}
        size = sum(t.numel() * t.element_size() for t in unique(state).values())
        if self.rank == 0 and (file_dir is None or size <= file_above_bytes):
            out["state_dict"] = state
        elif self.rank == 0 and file_dir is not None:
            out["path"] = str(write_weights(state, Path(file_dir), self.version))
        self.handover.write_behind()
        return out


class ShardedCriticActor(_GangRank, CriticActor):
    """One rank of PPO's critic as a gang (``train.critic_slots``); the same methods as
    :class:`CriticActor`. The update splits the micro-batches as the trainer's does; values
    are collective: every rank runs every forward (its parameters are all-gathered block by
    block) and rank 0 replies with them."""

    def __init__(
        self, model_dir: str, train: dict[str, Any], state_dir: str, dtype: str = "float32"
    ) -> None:
        self.cfg = msgspec.convert(train, TrainConfig)
        torch.manual_seed(0)
        self._join()
        self.model = ValueModel.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(self.device)
        self.pad_id = load_tokenizer(model_dir).pad_id
        lr = self.cfg.critic_lr
        self._shard_with_state(state_dir, lambda ps: torch.optim.AdamW(ps, lr=lr))

    def values(self, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        out = super().values(*args, **kwargs)
        return out if self.rank == 0 else []

    def weights(self) -> dict[str, Any]:
        self.handover.wait()
        state = gather_full(self.model, keep=self.rank == 0)
        return {"version": self.version, "state_dict": state}


class ShardedReferenceActor(_Rank, ReferenceActor):
    """One rank of the reference as a gang (``train.reference_slots``): parameters sharded
    (FSDP2, no optimiser); every rank runs the same forward passes (collective) and rank 0
    replies with the log-probs."""

    def __init__(self, model_dir: str, dtype: str = "float32") -> None:
        self._join()
        self.engine = HFEngine.load(model_dir, dtype=DTYPES[dtype], device=self.device)
        self.engine.model.requires_grad_(False)
        shard(self.engine.model, TrainConfig(), self.device)

    def logprobs(self, *args: Any, **kwargs: Any) -> list[Any]:
        out = super().logprobs(*args, **kwargs)
        return out if self.rank == 0 else []


def shard(model: Any, cfg: TrainConfig, device: torch.device) -> None:
    """FSDP2 on each transformer block (the model's own ``_no_split_modules``), then the root
    (embeddings, final norm, head: tied weights stay in one group). Gradients are summed
    across ranks, not averaged: the trainer scales them by the whole batch's units itself."""
    if cfg.activation_checkpointing:  # the transformer (a critic's is its backbone)
        hf = next(m for m in model.modules() if hasattr(m, "gradient_checkpointing_enable"))
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy()
    if cfg.mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported():
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif cfg.mixed_precision:
        log.warning("train.mixed_precision: %s has no bf16 compute here; float32", device)
    blocks = {b for m in model.modules() for b in getattr(m, "_no_split_modules", None) or ()}
    for sub in model.modules():
        if type(sub).__name__ in blocks:
            fully_shard(sub, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    for sub in model.modules():
        if isinstance(sub, FSDPModule):
            sub.set_gradient_divide_factor(1.0)
            sub.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)


def gather_full(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """The model's whole state dict, gathered parameter by parameter (every rank must call it:
    each ``full_tensor`` is an all-gather). Only where ``keep`` is the result kept, on the CPU;
    tied weights are gathered once and share one tensor, as in the unsharded state dict."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, torch.Tensor] = {}
    # by the parameter itself (tied weights are one), not by its local shard's address: a
    # rank's shard may be empty (a dim-0 of 1, a value head's), and empty shards share none
    for name, value in model.state_dict(keep_vars=True).items():
        key = id(value)
        if key not in seen:
            full = value.full_tensor() if isinstance(value, DTensor) else value
            seen[key] = full.detach().cpu() if keep else full.detach()[:0]
        if keep:
            out[name] = seen[key]
    return out


def unique(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One name per tensor (tied weights share one), the name that safetensors' ``save_model``
    keeps (the first in sorted order), so ``load_model`` reads the file back."""
    names: dict[int, list[str]] = {}
    for name, t in state.items():
        names.setdefault(id(t), []).append(name)
    return {sorted(group)[0]: state[sorted(group)[0]] for group in names.values()}


def write_weights(state: dict[str, torch.Tensor], folder: Path, version: int) -> Path:
    """A node-local safetensors file of the gathered weights, as the unsharded trainer writes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"policy-v{version:06d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in unique(state).items()}, str(tmp))
    os.replace(tmp, path)  # readers see a whole file or none
    for old in sorted(folder.glob("policy-v*.safetensors"))[:-2]:  # keep this and the last
        old.unlink(missing_ok=True)
    return path
