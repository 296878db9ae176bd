"""The stage protocol: what crosses between the pipeline and its actors, one struct per concept.

Actors return these structs; msgpack carries them as maps (tensors as zero-copy frames, in the
fields typed ``Any``), and the controller side converts each reply back at the typed client
(:func:`reply`), so a reader follows a call from the stage to the actor by type, not by string
keys. The actors' import paths are named once, here.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

ROLLOUT = "rlhfless.stages.rollout:RolloutActor"
REWARD = "rlhfless.stages.reward:RewardActor"
REFERENCE = "rlhfless.stages.reference:ReferenceActor"
TRAINER = "rlhfless.stages.trainer:TrainerActor"
CRITIC = "rlhfless.stages.critic:CriticActor"

T = TypeVar("T")


class FinishedSample(msgspec.Struct, frozen=True, kw_only=True):
    """One sample whose decode ended (EOS or length): its tokens are final."""

    key: int  # its index in the iteration's batch: sample s of prompt i is i * G + s
    token_ids: list[int]
    logprobs: Any  # float32 tensor [len(token_ids)]: log-probs of the sampled tokens
    finish: str  # "eos" or "length"


class RolloutProgress(msgspec.Struct, frozen=True, kw_only=True):
    """A running generate after its last step: what the cut planner reads."""

    finished: int  # rows done, own and joined
    total: int  # rows, own and joined
    own: list[tuple[int, int]]  # (own row, tokens so far) of each unfinished own row
    joined: list[tuple[int, int]]  # (key, tokens so far) of each unfinished joiner
    ended_own: list[tuple[int, int]] = []  # (own row, final length) of each ended own row
    ended_joined: list[tuple[int, int]] = []  # (key, final length) of each ended joiner


class Migration(msgspec.Struct, frozen=True, kw_only=True):
    """A function's cut as one migration: its state tokens and how they move."""

    method: str  # "ship_kv" or "reprefill"
    tokens: int  # state tokens of the cut rows (prompt + tokens so far, less the last)
    kv: list[Any] | None = None  # per row of the reply: its exported cache (ship_kv), else None


class GenerateReply(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout function's generate (or resume): its samples, own rows first, then joiners."""

    response_ids: list[list[int]]
    logprobs: list[Any]  # float32 tensor per sample
    finish: list[str]  # "eos", "length" or "cut"
    version: int  # the weights version that produced every sample
    prefill_tokens: int
    prefill_saved: int = 0  # tokens of a batch-wide common prefix not prefilled again
    decode_tokens: int
    prefill_seconds: float
    decode_seconds: float
    steps: int  # decode steps run by this call (a joiner's earlier tokens ran elsewhere)
    kv_tokens: int = 0  # joiners / resume: state tokens that arrived as a shipped cache
    joined: list[int] = []  # keys of the samples after the own ones: sequences that joined
    joined_prefill: int = 0  # joiners' state tokens re-prefilled here
    rng: list[int | None] | None = None  # per sample: a cut sample's sampling key
    migration: Migration | None = None  # this call's cut, if it cut


class CutRow(msgspec.Struct, frozen=True, kw_only=True):
    """What another function needs to continue one cut sequence."""

    key: int  # its index in the batch
    prompt: list[int]
    token_ids: list[int]  # tokens so far
    logprobs: list[float]
    kv: Any = None  # its shipped cache (prompt + tokens[:-1]); None: re-prefill it
    rng: int | None = None  # its sampling key, to continue its draws (None: greedy)


class StepStats(msgspec.Struct, frozen=True, kw_only=True):
    """A trainer's or critic's reply to an update."""

    version: int  # the role's version after the update
    durable_version: int  # the newest version whose hand-over state is on disk
    replayed: int  # earlier steps re-run from kept inputs (a cold function lacked them)
    seconds: float  # the update alone
    loss: float = 0.0  # policy (trainer)
    kl: float = 0.0
    clip_frac: float = 0.0
    grad_norm: float = 0.0
    value_loss: float = 0.0  # critic
    value_clip_frac: float = 0.0


class Published(msgspec.Struct, frozen=True, kw_only=True):
    """The trainer's weights at ``version``: inline tensors, or a node-local file's path."""

    version: int
    state_dict: dict[str, Any] | None = None
    path: str | None = None


def reply(value: Any, kind: type[T]) -> T:
    """An actor's reply as its protocol struct (the typed side of a handle call)."""
    return msgspec.convert(value, kind)
