"""The decode loop behind ``HFEngine.generate``, and sequences that join it while it runs.

Cut-and-migrate as planned (``scaling/migrate.py``, the simulator) moves a function's
stragglers, the moment it cuts, into the running batch of a function that is still working,
which then carries them to the end with its own rows. Here that is a :class:`Joiner` handed to a
running ``generate`` through its :class:`Inbox` (from another thread: the rollout actor's
concurrent ``admit`` call). Between two decode steps the loop takes what arrived, builds each
joiner's decode state (its shipped KV, or a re-prefill of prompt + partial response:
``kv_transfer.resume_prefix``), left-pads it and the running batch to one width and continues
them together. Rotary keys carry their positions, so padding columns in between change nothing:
only each row's mask and next position matter, as for prompts of different lengths.

Sampling: every row has a 32-bit key, from the call's seed and the row's index, and its n-th
token is drawn with the uniform number ``hash(key, n)`` (inverse CDF). The draw depends on
nothing else, so a cut row carries on with just its key (``Decoded.rng``, then ``Joiner.rng`` or
``resume(rng=...)``): wherever it runs and whoever shares its batch, cut or not, moved or not,
it comes out as the same sequence (up to float summation order in a batch of another shape),
under greedy decoding and under sampling alike. It is vectorised: one hash per row per step.

A generate that ends (every row done) closes its inbox atomically with taking what is left, so
an offer is either refused (the caller routes the sequences elsewhere) or decoded to the end: a
sequence is never accepted and then dropped. A generate that cuts returns the joiners it had not
started as cut too, unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfless.adapters.errors import EngineError
from rlhfless.adapters.kv_transfer import (
    PrefillEngine,
    PrefixKV,
    cache_kwarg,
    cache_of,
    export_rows,
    kv_of,
    kv_tokens,
    resume_prefix,
)
from rlhfless.adapters.sample import Sample


@dataclass
class Joiner:
    """A cut sequence continued inside another function's running generate."""

    key: int  # the caller's id for it (the rollout stage: its global sample index)
    prompt: list[int]
    partial: Sample  # tokens and log-probs so far; at least one token
    kv: torch.Tensor | None = None  # shipped KV of prompt + tokens[:-1]; None: re-prefill here
    rng: int | None = None  # its sampling key (sampling); None: one is made from its key


class Inbox:
    """Joiners offered to a running generate from another thread.

    ``offer`` is refused once the generate has closed the inbox (it ended or cut); ``take``
    hands over what arrived, and ``take(final=True)`` closes the inbox if nothing did, in one
    step under the lock, so nothing offered is ever lost between the two.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[Joiner] = []
        self._open = False
        self.cut_requested = False  # the controller's cut: stop at the next step
        self.progress: Progress | None = None  # the running generate's, after every step
        # Rows that ended (EOS or length) since the last take_finished: a streamed rollout
        # hands finished groups on while the rest of the batch still decodes.
        self._finished: list[FinishedRow] = []

    def open(self) -> None:
        with self._lock:
            self._rows = []  # anything left by a generate that failed belongs to no one now
            self._open = True
            self.cut_requested = False
            self.progress = None
            self._finished = []

    @property
    def is_open(self) -> bool:
        return self._open

    def request_cut(self) -> bool:
        """Ask the running generate to cut at its next step; False if none is running."""
        with self._lock:
            if not self._open:
                return False
            self.cut_requested = True
            return True

    def offer(self, rows: Sequence[Joiner]) -> bool:
        with self._lock:
            if not self._open:
                return False
            self._rows.extend(rows)
            return True

    def take(self, final: bool = False) -> list[Joiner]:
        with self._lock:
            rows, self._rows = self._rows, []
            if final and not rows:
                self._open = False
            return rows

    def put_finished(self, rows: Sequence[FinishedRow]) -> None:
        with self._lock:
            self._finished.extend(rows)

    def take_finished(self) -> list[FinishedRow]:
        """Rows that ended since the last take (their final tokens: they never change)."""
        with self._lock:
            rows, self._finished = self._finished, []
            return rows

    def close(self) -> list[Joiner]:
        """Close now and return whatever arrived but was not taken."""
        with self._lock:
            self._open = False
            rows, self._rows = self._rows, []
            return rows


@dataclass(frozen=True)
class Progress:
    """A running generate after a step: what a controller needs to plan a cut."""

    finished: int  # rows done (EOS or length), own and joined
    total: int  # rows, own and joined
    own: list[tuple[int, int]]  # (own row, tokens so far) of each unfinished own row
    joined: list[tuple[int, int]]  # (key, tokens so far) of each unfinished joiner
    # (own row, length) / (key, length) of each row that ended: its final length, what an
    # online predictor reads its unfinished siblings from
    ended_own: list[tuple[int, int]] = field(default_factory=list)
    ended_joined: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class FinishedRow:
    """A row that ended (EOS or length) in a running generate; its tokens are final."""

    row: int  # the generate's row: own rows first, then joiners in arrival order
    key: int | None  # a joiner's key (the caller's id for it); None for an own row
    token_ids: list[int]
    logprobs: list[float]
    reason: str


@dataclass
class Decoded:
    """What the loop produced for every row: own rows first, then joiners in arrival order."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    reasons: list[str]
    joined: list[Joiner] = field(default_factory=list)
    decode_tokens: int = 0
    joined_prefill_tokens: int = 0  # joiners' prompt + partial tokens re-prefilled here
    joined_prefill_seconds: float = 0.0
    kv_tokens: int = 0  # joiners' tokens whose KV arrived shipped
    shipped: dict[int, Any] = field(default_factory=dict)  # row -> exported KV of a cut row
    rng: dict[int, int] = field(default_factory=dict)  # row -> sampling key of a cut row
    start: list[int] = field(default_factory=list)  # tokens each row had when it came in
    steps: int = 0  # decode steps run here

    def add(self, j: Joiner, reason: str) -> int:
        """A row for joiner ``j``, holding its tokens so far; its index."""
        self.tokens.append(list(j.partial.token_ids))
        self.logprobs.append(list(j.partial.logprobs))
        self.reasons.append(reason)
        self.joined.append(j)
        self.start.append(len(j.partial.token_ids))
        return len(self.tokens) - 1


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(cache: Any, mask: torch.Tensor, pre: PrefixKV, config) -> tuple[Any, torch.Tensor]:
    """The running batch's cache and mask with ``pre``'s rows appended, both left-padded."""
    width = max(mask.shape[1], pre.mask.shape[1])
    keys, values = [], []
    for (k, v), pk, pv in zip(kv_of(cache), pre.keys, pre.values, strict=True):
        keys.append(torch.cat([_pad_left(k, width, 2), _pad_left(pk, width, 2)]))
        values.append(torch.cat([_pad_left(v, width, 2), _pad_left(pv, width, 2)]))
    mask = torch.cat([_pad_left(mask, width, 1), _pad_left(pre.mask, width, 1)])
    return cache_of(keys, values, config), mask


def decode(
    engine: PrefillEngine,
    pre: PrefixKV,
    src: list[int],
    max_new_tokens: int,
    temp: float,
    greedy: bool,
    seed: int,
    stop: Callable[[int, int], bool] | None = None,
    ship_kv: bool = False,
    inbox: Inbox | None = None,
    rng: Sequence[int | None] | None = None,
    drawn_before: Sequence[int] | None = None,
) -> Decoded:
    """Decode rows ``src`` (prefix rows of ``pre``) to EOS or ``max_new_tokens``, with joiners.

    Sampling: row r's key is made from ``(seed, r)``, or is ``rng[r]`` (a cut row's, continued
    here after the ``drawn_before[r]`` tokens it drew elsewhere)."""
    loop = _DecodeLoop(engine, pre, src, seed, inbox, rng, drawn_before)
    while True:
        tok, ended, rows = loop.sample(temp, greedy, max_new_tokens)
        loop.report(rows, ended)
        if bool(ended.all()):
            if loop.take_final_joiners():
                continue
            break
        if loop.cut_wanted(stop):
            loop.cut(ended, ship_kv, greedy)
            break
        tok = loop.drop_ended(tok, ended)
        loop.forward(tok)
        loop.take_joiners()
    return loop.result()


class _DecodeLoop:
    """One ``decode`` call's state between steps: the batch (cache, mask, next-token logits,
    the row and next position of each batch position) and every row's output so far."""

    def __init__(
        self,
        engine: PrefillEngine,
        pre: PrefixKV,
        src: list[int],
        seed: int,
        inbox: Inbox | None,
        rng: Sequence[int | None] | None,
        drawn_before: Sequence[int] | None,
    ) -> None:
        self.engine, self.seed, self.inbox = engine, seed, inbox
        model, dev = engine.model, engine.device
        self.model, self.dev = model, dev
        index = torch.tensor(src, dtype=torch.long, device=dev)
        self.cache: Any = pre.cache_for(index, model.config)
        self.logits, self.mask = pre.logits[index], pre.mask[index]
        self.ckw = cache_kwarg(model)
        self.eos = torch.tensor(sorted(engine.tokenizer.eos_ids), device=dev)
        self.n_own = n_own = len(src)
        self.out = Decoded(
            tokens=[[] for _ in src], logprobs=[[] for _ in src], reasons=["length"] * n_own,
            start=[0] * n_own,
        )  # fmt: skip
        # Per row (indexed by row, not batch position): its sampling key, and tokens drawn so far.
        given = rng if rng is not None else [None] * n_own
        self.keys = torch.tensor(
            [fold(k if k is not None else row_seed(seed, r)) for r, k in enumerate(given)],
            dtype=torch.long, device=dev,
        )  # fmt: skip
        self.drawn = torch.tensor(
            list(drawn_before) if drawn_before is not None else [0] * n_own,
            dtype=torch.long, device=dev,
        )  # fmt: skip
        self.active = torch.arange(n_own, device=dev)  # row of each batch position
        self.next_pos = self.mask.sum(-1)  # positions count real tokens only (left padding)
        self.finished = 0

    def sample(
        self, temp: float, greedy: bool, max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Choose and record every batch row's next token; the tokens, which batch rows ended
        (EOS or length) and the row of each batch position."""
        out, active = self.out, self.active
        scores = torch.log_softmax(self.logits.float() / temp, dim=-1)
        tok = (
            scores.argmax(-1) if greedy else _sample(scores, self.keys[active], self.drawn[active])
        )
        self.drawn[active] += 1
        lp = scores.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        done = torch.isin(tok, self.eos)
        rows = active.tolist()
        for r, t, l_, d in zip(rows, tok.tolist(), lp.tolist(), done.tolist(), strict=True):
            out.tokens[r].append(t)
            out.logprobs[r].append(l_)
            if d:
                out.reasons[r] = "eos"
        full = torch.tensor([len(out.tokens[r]) >= max_new_tokens for r in rows], device=self.dev)
        return tok, done | full, rows

    def report(self, rows: list[int], ended: torch.Tensor) -> None:
        """Count the rows that ended; hand them and the progress after this step to the inbox."""
        out, inbox = self.out, self.inbox
        self.finished += int(ended.sum())
        if inbox is not None and bool(ended.any()):
            inbox.put_finished(
                [_finished_row(out, r, self.n_own) for r in self.active[ended].tolist()]
            )
        if inbox is not None:
            live = [
                (r, len(out.tokens[r])) for r, e in zip(rows, ended.tolist(), strict=True) if not e
            ]
            inbox.progress = _progress(out, live, self.finished, self.n_own)

    def take_final_joiners(self) -> bool:
        """Every row ended: start a batch of the joiners that arrived, or close the inbox (in
        one step with taking them) and stop; whether there is a batch to go on with."""
        joiners = self.inbox.take(final=True) if self.inbox is not None else []
        if not joiners:
            return False
        state = self.admit(joiners)
        self.cache, self.mask = cache_of(state.keys, state.values, self.model.config), state.mask
        self.logits, self.active, self.next_pos = (
            state.logits, self.rows_for(joiners), state.mask.sum(-1)
        )  # fmt: skip
        return True

    def cut_wanted(self, stop: Callable[[int, int], bool] | None) -> bool:
        """Whether the controller (through the inbox) or ``stop`` asks for a cut now."""
        want_cut = self.inbox is not None and self.inbox.cut_requested
        if not want_cut and stop is not None:
            want_cut = stop(self.finished, len(self.out.tokens))
        return want_cut

    def cut(self, ended: torch.Tensor, ship_kv: bool, greedy: bool) -> None:
        """End the unfinished rows as cut, with their KV and sampling keys, and the joiners not
        started yet as they came."""
        out, active = self.out, self.active
        for r in active[~ended].tolist():
            out.reasons[r] = "cut"
        if ship_kv:
            out.shipped = export_rows(self.cache, self.mask, active, ~ended)
        if not greedy:
            out.rng = {r: int(self.keys[r]) for r in active[~ended].tolist()}
        for j in self.inbox.close() if self.inbox is not None else []:  # not started: cut as is
            r = out.add(j, "cut")
            if j.kv is not None:
                out.shipped[r] = j.kv
            if j.rng is not None:
                out.rng[r] = j.rng

    def drop_ended(self, tok: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
        """The batch without its ended rows; the tokens of the rows left."""
        if bool(ended.any()):
            # Drop finished rows from the batch (and their KV): long-tailed lengths leave most
            # rows finished long before the last one, and feeding them pads is wasted work.
            keep = (~ended).nonzero().squeeze(-1)
            self.cache.reorder_cache(keep)
            self.active, tok = self.active[keep], tok[keep]
            self.mask, self.next_pos = self.mask[keep], self.next_pos[keep]
        return tok

    def forward(self, tok: torch.Tensor) -> None:
        """Feed ``tok`` (one token per batch row): the next-token logits, the cache grown."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
        self.logits = self.model(
            input_ids=tok.unsqueeze(-1),
            attention_mask=self.mask,
            position_ids=self.next_pos.unsqueeze(-1),
            use_cache=True,
            **{self.ckw: self.cache},
        ).logits[:, -1, :]
        self.next_pos = self.next_pos + 1

    def take_joiners(self) -> None:
        """Append the joiners that arrived to the running batch, left-padded to one width."""
        joiners = self.inbox.take() if self.inbox is not None else []
        if joiners:
            state = self.admit(joiners)
            self.cache, self.mask = merge(self.cache, self.mask, state, self.model.config)
            self.logits = torch.cat([self.logits, state.logits])
            self.active = torch.cat([self.active, self.rows_for(joiners)])
            self.next_pos = torch.cat([self.next_pos, state.mask.sum(-1)])

    def admit(self, joiners: list[Joiner]) -> PrefixKV:
        """Rows for ``joiners``: their decode state (next-token logits, cache, mask)."""
        out, dev = self.out, self.dev
        seqs = [[*j.prompt, *j.partial.token_ids] for j in joiners]
        state = resume_prefix(self.engine, seqs, [j.kv for j in joiners])
        out.joined_prefill_tokens += state.tokens
        out.joined_prefill_seconds += state.seconds
        for j in joiners:
            out.add(j, "length")
            if j.kv is not None:
                out.kv_tokens += kv_tokens(j.kv)
        new = [
            fold(j.rng if j.rng is not None else row_seed(self.seed, 1_000_000 + j.key))
            for j in joiners
        ]
        self.keys = torch.cat([self.keys, torch.tensor(new, dtype=torch.long, device=dev)])
        self.drawn = torch.cat(
            [self.drawn, torch.tensor([len(j.partial.token_ids) for j in joiners], device=dev)]
        )
        return state

    def rows_for(self, joiners: list[Joiner]) -> torch.Tensor:
        """The rows of ``joiners``, just admitted: the last ones."""
        first = len(self.out.tokens) - len(joiners)
        return torch.arange(first, len(self.out.tokens), device=self.dev)

    def result(self) -> Decoded:
        """The output, with the tokens decoded here and the steps run."""
        out = self.out
        out.decode_tokens = sum(len(t) - s for t, s in zip(out.tokens, out.start, strict=True))
        # Steps run here: a joiner's tokens from before it came do not count.
        out.steps = max((len(t) - s for t, s in zip(out.tokens, out.start, strict=True)), default=0)
        return out


def _progress(out: Decoded, live: list[tuple[int, int]], finished: int, n_own: int) -> Progress:
    """The generate after a step: its unfinished rows with tokens so far, its ended rows with
    their final lengths (own rows by row, joiners by key)."""
    running = {r for r, _ in live}
    ended = [(r, len(out.tokens[r])) for r in range(len(out.tokens)) if r not in running]
    return Progress(
        finished,
        len(out.tokens),
        [(r, m) for r, m in live if r < n_own],
        [(out.joined[r - n_own].key, m) for r, m in live if r >= n_own],
        [(r, m) for r, m in ended if r < n_own],
        [(out.joined[r - n_own].key, m) for r, m in ended if r >= n_own],
    )


def _finished_row(out: Decoded, r: int, n_own: int) -> FinishedRow:
    key = out.joined[r - n_own].key if r >= n_own else None
    return FinishedRow(r, key, list(out.tokens[r]), list(out.logprobs[r]), out.reasons[r])


def _sample(scores: torch.Tensor, keys: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse CDF at ``uniform(key, drawn)``: a row's n-th draw is fixed
    by its key and n alone."""
    return pick(scores, uniform(keys, drawn))


def pick(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token at quantile ``u`` (in [0, 1]) of each row's distribution (log-probs)."""
    # float64: a float32 sum over a large vocabulary cannot resolve a token's share below ~3e-8.
    cdf = scores.double().exp().cumsum(-1)
    total = cdf[:, -1]
    if not bool(torch.isfinite(total).all()) or bool((total <= 0).any()):
        raise EngineError("the next-token distribution is not finite (NaN or inf logits)")
    x = (u.to(total.dtype) * total).unsqueeze(-1)
    tok = torch.searchsorted(cdf, x, right=True).squeeze(-1)
    # u * total can round up to total itself: never past the last token with probability > 0.
    last = (cdf < total.unsqueeze(-1)).sum(-1)
    return torch.minimum(tok, last)


_M32 = 0xFFFF_FFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for 32-bit values in int64 without overflowing it (a full 32 x 32-bit
    product can pass 2**63): the two 16-bit halves of ``x`` are multiplied separately."""
    return ((x & 0xFFFF) * c + (((x >> 16) * c) & 0xFFFF) * 65536) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser, on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniform(keys: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """A uniform float64 in (0, 1) for each (key, n): 53 bits from two 32-bit hashes."""
    hi = _mix32((keys ^ ((2 * n) * 0x9E3779B1)) & _M32)
    lo = _mix32((keys ^ ((2 * n + 1) * 0x9E3779B1 + 0x7F4A7C15)) & _M32)
    return ((hi << 21) + (lo >> 11)).double().add_(0.5).mul_(2.0**-53)


def fold(key: int) -> int:
    """A 32-bit sampling key from any integer (the identity on keys already folded)."""
    return (key ^ (key >> 32)) & _M32


def row_seed(seed: int, row: int) -> int:
    """A row's key material: distinct rows, distinct keys (splitmix64 of seed and row)."""
    x = (seed * 0x9E3779B97F4A7C15 + row + 1) & 0xFFFF_FFFF_FFFF_FFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFF_FFFF_FFFF_FFFF
    return (x ^ (x >> 31)) & 0x7FFF_FFFF_FFFF_FFFF
