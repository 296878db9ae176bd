"""How fast one rollout function works, calibrated online from what earlier iterations measured.

**Decode: a linear step time.** One decode step of a batch of ``b`` running sequences takes
``t_step(b) = t0 + t1 * b``. ``t0`` is the fixed cost of a step (reading the weights once: memory
bound, e.g. 15 GB at 864 GB/s ~ 17 ms for a 7B model in bf16 on an L40S); ``t1`` is the extra
cost per running sequence (its KV-cache reads and its share of the matmuls). Its throughput
``b / (t0 + t1 b)`` is the saturating ``a b / (1 + c b)`` curve with ``a = 1/t0``, ``c = t1/t0``,
so the two usual forms are the same model. The linear form has a property that makes calibration
exact: over a whole ``generate`` call of ``s`` steps producing ``n`` tokens, the batch sizes of
the steps sum to ``n``, so the call's seconds are ``t0 * s + t1 * n`` whatever the lengths were.
Every call is thus one linear equation in ``(t0, t1)``; :class:`ThroughputModel` fits them by
weighted least squares on the per-step form (mean step time vs mean batch), with two
pseudo-observations from the prior (at batch 1 and ``max_batch``) so a single call, or calls all
at one batch size, still give a well-posed fit; negative coefficients are clamped to 0.

**Long tails.** :func:`decode_timeline` simulates continuous batching (FIFO admission, at most
``max_batch`` running): the batch shrinks as sequences finish, so the last long sequence decodes
alone at ``t0`` per token. That is what makes long tails expensive.

**Prefill** is ``tokens / prefill_tokens_per_s``. **Cold start** (process start to ready, e.g.
``BillingEvent.ready_at - requested_at``) and **weight load** (fresh weights each iteration) are
the medians of recent observations. Before any observation, the prior :class:`ThroughputParams`.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from array import array
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from statistics import median

import msgspec

from rlhfless.runtime.messages import BillingEvent
from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting


class ThroughputParams(msgspec.Struct, frozen=True, kw_only=True):
    """One function's speed. Defaults: a 7B model in bf16 under vLLM on one L40S (estimates)."""

    step_seconds: float = 0.018  # t0: fixed time of one decode step (weights read once)
    step_seconds_per_seq: float = 0.00008  # t1: extra step time per running sequence
    prefill_tokens_per_s: float = 12000.0  # prompt tokens prefilled per second
    cold_start_seconds: float = 8.0  # process start to ready (model in memory)
    weight_load_seconds: float = 2.0  # receiving this iteration's weights
    max_batch: int = 256  # most sequences decoding at once

    def __post_init__(self) -> None:
        for name in ("step_seconds", "step_seconds_per_seq", "cold_start_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise BadScalingSetting(name, value, "a finite number >= 0 (seconds)")
        if not self.weight_load_seconds >= 0 or not math.isfinite(self.weight_load_seconds):
            raise BadScalingSetting(
                "weight_load_seconds", self.weight_load_seconds, "a finite number >= 0 (seconds)"
            )
        if not (math.isfinite(self.prefill_tokens_per_s) and self.prefill_tokens_per_s > 0):
            raise BadScalingSetting(
                "prefill_tokens_per_s", self.prefill_tokens_per_s, "a finite number > 0"
            )
        if self.step_seconds + self.step_seconds_per_seq <= 0:
            raise BadScalingSetting(
                "step_seconds", self.step_seconds, "> 0 when step_seconds_per_seq is 0"
            )
        if not (isinstance(self.max_batch, int) and self.max_batch >= 1):
            raise BadScalingSetting("max_batch", self.max_batch, "an integer >= 1")

    def step_time(self, batch: int) -> float:
        return self.step_seconds + self.step_seconds_per_seq * batch

    def prefill_seconds(self, tokens: float) -> float:
        return max(0.0, tokens) / self.prefill_tokens_per_s


def _steps_needed(lengths: Sequence[float], cap: int) -> list[int]:
    """Each sequence's decode steps (``ceil(L)``), the inputs checked."""
    if cap < 1:
        raise BadScalingInput("decode_timeline", f"max_batch must be >= 1, got {cap}")
    if not isinstance(lengths, list | tuple):
        lengths = list(lengths)  # read three times below: a one-shot iterable would run dry
    # Checked with C-level passes (all, min): the planner decodes thousands of these.
    if not all(map(math.isfinite, lengths)) or min(lengths, default=0.0) < 0:
        bad = next(x for x in lengths if not (math.isfinite(x) and x >= 0))
        raise BadScalingInput("decode_timeline", f"lengths must be finite and >= 0, got {bad}")
    return list(map(math.ceil, lengths))


def _one_batch(steps: Sequence[int], params: ThroughputParams) -> Iterator[tuple[int, int, float]]:
    """``(i, j, t)``: ``steps[i:j]`` finish at ``t``, when every sequence runs from step 0 in one
    batch (``steps``: the non-empty sequences' steps, ascending).

    The same arithmetic, in the same order, as the general loop of :func:`decode_timeline` (so
    the same times to the last bit), without a heap: the planner evaluates thousands of these.
    """
    t, step, n, i = 0.0, 0, len(steps), 0
    while i < n:
        target = steps[i]
        j = bisect.bisect_right(steps, target, i)
        t += (target - step) * params.step_time(n - i)  # n - i still running
        step = target
        yield i, j, t
        i = j


def decode_timeline(
    lengths: Sequence[float], params: ThroughputParams, max_batch: int | None = None
) -> list[float]:
    """Seconds from the start of decoding until each sequence finishes (continuous batching).

    Sequences are admitted in the given order (FIFO) while fewer than ``max_batch`` run; a
    sequence of length ``L`` needs ``ceil(L)`` steps; length 0 finishes at time 0.
    """
    cap = params.max_batch if max_batch is None else max_batch
    steps_needed = _steps_needed(lengths, cap)
    # All in one batch (the usual case): no admission to interleave with the finishes.
    live = [i for i, s in enumerate(steps_needed) if s > 0]
    if len(live) > cap:
        return _queued_timeline(steps_needed, params, cap)
    finish = [0.0] * len(steps_needed)
    live.sort(key=steps_needed.__getitem__)
    for i, j, t in _one_batch([steps_needed[x] for x in live], params):
        for x in live[i:j]:
            finish[x] = t
    return finish


def _queued_timeline(
    steps_needed: Sequence[int], params: ThroughputParams, cap: int
) -> list[float]:
    """:func:`decode_timeline` when sequences queue for a batch slot (FIFO admission)."""
    finish = [0.0] * len(steps_needed)
    active: list[tuple[int, int]] = []  # (absolute finish step, sequence index)
    nxt, step, t = 0, 0, 0.0
    while True:
        while len(active) < cap and nxt < len(steps_needed):
            if steps_needed[nxt] > 0:
                heapq.heappush(active, (step + steps_needed[nxt], nxt))
            nxt += 1
        if not active:
            if nxt >= len(steps_needed):
                return finish
            continue
        target = active[0][0]
        t += (target - step) * params.step_time(len(active))
        step = target
        while active and active[0][0] == step:
            finish[heapq.heappop(active)[1]] = t


def decode_seconds(
    lengths: Sequence[float], params: ThroughputParams, max_batch: int | None = None
) -> float:
    """Seconds to decode ``lengths`` on one function (the last sequence's finish)."""
    cap = params.max_batch if max_batch is None else max_batch
    steps_needed = _steps_needed(lengths, cap)
    live = [s for s in steps_needed if s > 0]  # admission order (an empty one takes no slot)
    key = _decode_key(live, params, cap)
    seconds = _DECODED.get(key) if key is not None else None
    if seconds is None:
        if len(live) <= cap:  # one batch: the last finish, without the per-sequence timeline
            last = deque(_one_batch(sorted(live), params), maxlen=1)
            seconds = last[0][2] if last else 0.0
        else:
            seconds = _queued_end(live, params, cap)
        if key is not None:
            if len(_DECODED) >= _DECODED_MAX:
                _DECODED.clear()
            _DECODED[key] = seconds
    return seconds


# decode_seconds by what it depends on: the planner decodes the same functions' scenarios again
# at each k grid, candidate check and iteration (about one call in six is new).
_DECODED: dict[tuple[bytes, str, int], float] = {}
_DECODED_MAX = 1 << 17


def _decode_key(
    live: list[int], params: ThroughputParams, cap: int
) -> tuple[bytes, str, int] | None:
    """The non-empty sequences' steps in admission order (hashed: equal digests are equal
    steps), the params as repr spells them (every field, exactly) and the batch cap; None when
    a step does not fit 64 bits or the params are not a :class:`ThroughputParams` (not kept)."""
    if type(params) is not ThroughputParams:
        return None
    try:
        steps = array("q", live).tobytes()
    except OverflowError:
        return None
    return (hashlib.sha256(steps).digest(), _spelled(params), cap)


# repr of the params asked about, by identity (the object is held, so its id is not reused):
# a struct's repr is slow next to a decode looked up.
_SPELLED: dict[int, tuple[ThroughputParams, str]] = {}


def _spelled(params: ThroughputParams) -> str:
    kept = _SPELLED.get(id(params))
    if kept is None or kept[0] is not params:
        if len(_SPELLED) >= 1024:
            _SPELLED.clear()
        kept = _SPELLED[id(params)] = (params, repr(params))  # frozen: its repr stays
    return kept[1]


def _queued_end(live: Sequence[int], params: ThroughputParams, cap: int) -> float:
    """The last finish of :func:`_queued_timeline` (``live``: the non-empty sequences' steps, in
    admission order), by the same arithmetic in the same order. Only finish steps are kept (no
    sequence index), and a finish whose slot goes to the next queued sequence is replaced in
    place: the heap holds the same steps, at a fraction of the cost."""
    active = list(live[:cap])  # all admitted at step 0: their last steps are their lengths
    heapq.heapify(active)
    nxt, n, step, t = cap, len(live), 0, 0.0
    while active:
        target = active[0]
        t += (target - step) * params.step_time(len(active))
        step = target
        while active and active[0] == step:
            if nxt < n:  # its slot goes to the next in the queue, admitted now
                heapq.heapreplace(active, step + live[nxt])
                nxt += 1
            else:
                heapq.heappop(active)
    return t


def decode_seconds_fast(
    max_length: float, total_tokens: float, params: ThroughputParams, sequences: int
) -> float:
    """Closed form of :func:`decode_seconds`, exact when every sequence fits in one batch.

    ``t0 * steps + t1 * tokens`` with ``steps = max_length``; when more sequences than
    ``max_batch`` wait, steps are at least ``total_tokens / max_batch`` (a lower bound).
    """
    steps = max(math.ceil(max_length), 0)
    if sequences > params.max_batch:
        steps = max(steps, math.ceil(total_tokens / params.max_batch))
    return params.step_seconds * steps + params.step_seconds_per_seq * total_tokens


class DecodeSample(msgspec.Struct, frozen=True, array_like=True):
    steps: int
    tokens: int
    seconds: float


class ThroughputState(msgspec.Struct, kw_only=True):
    prior: ThroughputParams
    prior_weight: float
    window: int
    decode: list[DecodeSample] = []
    prefill: list[tuple[float, float]] = []  # (tokens, seconds)
    cold_starts: list[float] = []
    weight_loads: list[float] = []


class ThroughputModel:
    """A function's :class:`ThroughputParams`, refitted from measurements (see module docstring).

    ``prior_weight`` is how many measured calls the prior counts as; ``window`` how many recent
    measurements of each kind are kept (older ones describe another batch mix or machine state).
    """

    def __init__(
        self, prior: ThroughputParams | None = None, prior_weight: float = 1.0, window: int = 64
    ) -> None:
        if not (math.isfinite(prior_weight) and prior_weight > 0):
            raise BadScalingSetting("prior_weight", prior_weight, "a finite number > 0")
        if not (isinstance(window, int) and window >= 1):
            raise BadScalingSetting("throughput window", window, "an integer >= 1")
        self.prior = prior or ThroughputParams()
        self.prior_weight = float(prior_weight)
        self.window = window
        self._decode: deque[DecodeSample] = deque(maxlen=window)
        self._prefill: deque[tuple[float, float]] = deque(maxlen=window)
        self._cold: deque[float] = deque(maxlen=window)
        self._weights: deque[float] = deque(maxlen=window)
        self._fitted: ThroughputParams | None = self.prior

    # ------------------------------------------------------------------ measurements

    def observe_decode(self, steps: int, tokens: int, seconds: float) -> None:
        """One decode run: ``steps`` engine steps produced ``tokens`` tokens in ``seconds``.

        ``steps`` is the longest response's length when every sequence ran in one batch.
        """
        if steps < 0 or tokens < 0 or not (math.isfinite(seconds) and seconds >= 0):
            raise BadScalingInput(
                "observe_decode",
                f"need steps, tokens, seconds >= 0, got {steps}, {tokens}, {seconds}",
            )
        if steps == 0 or tokens < steps:
            return  # nothing decoded, or inconsistent (a step decodes >= 1 token): no information
        self._decode.append(DecodeSample(steps=int(steps), tokens=int(tokens), seconds=seconds))
        self._fitted = None

    def observe_decode_step(self, batch: int, seconds: float) -> None:
        """One decode step of ``batch`` sequences took ``seconds``."""
        self.observe_decode(1, batch, seconds)

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        if tokens < 0 or not (math.isfinite(seconds) and seconds >= 0):
            raise BadScalingInput("observe_prefill", f"got tokens={tokens}, seconds={seconds}")
        if tokens > 0 and seconds > 0:
            self._prefill.append((float(tokens), float(seconds)))
            self._fitted = None

    def observe_cold_start(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise BadScalingInput("observe_cold_start", f"seconds must be >= 0, got {seconds}")
        self._cold.append(float(seconds))
        self._fitted = None

    def observe_weight_load(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise BadScalingInput("observe_weight_load", f"seconds must be >= 0, got {seconds}")
        self._weights.append(float(seconds))
        self._fitted = None

    def observe_billing_event(self, event: BillingEvent) -> None:
        """The cold start a function's billing event records (``ready_at - requested_at``)."""
        if event.ready_at is not None:
            self.observe_cold_start(event.ready_at - event.requested_at)

    # ------------------------------------------------------------------ the fit

    def params(self) -> ThroughputParams:
        if self._fitted is None:
            self._fitted = self._fit()
        return self._fitted

    def _fit(self) -> ThroughputParams:
        p = self.prior
        t0, t1 = p.step_seconds, p.step_seconds_per_seq
        if self._decode:
            # Points (mean batch, mean step time), each measured call weight 1; prior points.
            pts = [(d.tokens / d.steps, d.seconds / d.steps, 1.0) for d in self._decode]
            for b in (1.0, float(p.max_batch)):
                pts.append((b, p.step_time(int(b)), self.prior_weight / 2.0))
            sw = sum(w for _, _, w in pts)
            mb = sum(w * b for b, _, w in pts) / sw
            my = sum(w * y for _, y, w in pts) / sw
            sbb = sum(w * (b - mb) ** 2 for b, _, w in pts)
            sby = sum(w * (b - mb) * (y - my) for b, y, w in pts)
            t1 = sby / sbb if sbb > 0 else 0.0
            t0 = my - t1 * mb
            if t1 < 0:
                t1, t0 = 0.0, my
            if t0 < 0:
                t0 = 0.0
                t1 = sum(w * b * y for b, y, w in pts) / sum(w * b * b for b, _, w in pts)
            if t0 + t1 <= 0:
                t0, t1 = p.step_seconds, p.step_seconds_per_seq
        rate = p.prefill_tokens_per_s
        if self._prefill:
            rate = sum(t for t, _ in self._prefill) / sum(s for _, s in self._prefill)
        return ThroughputParams(
            step_seconds=t0,
            step_seconds_per_seq=t1,
            prefill_tokens_per_s=rate,
            cold_start_seconds=float(median(self._cold)) if self._cold else p.cold_start_seconds,
            weight_load_seconds=float(median(self._weights))
            if self._weights
            else p.weight_load_seconds,
            max_batch=p.max_batch,
        )

    # ------------------------------------------------------------------ prediction

    def predict_seconds(
        self, prefill_tokens: float, decode_lengths: Sequence[float], batch: int | None = None
    ) -> float:
        """Seconds for one function to prefill ``prefill_tokens`` and decode ``decode_lengths``
        (at most ``batch`` at once; default ``max_batch``). Excludes cold start and weight load.
        """
        p = self.params()
        return p.prefill_seconds(prefill_tokens) + decode_seconds(decode_lengths, p, batch)

    # ------------------------------------------------------------------ checkpoints

    def to_dict(self) -> dict:
        state: dict = msgspec.to_builtins(  # a struct's builtins are a dict
            ThroughputState(
                prior=self.prior,
                prior_weight=self.prior_weight,
                window=self.window,
                decode=list(self._decode),
                prefill=list(self._prefill),
                cold_starts=list(self._cold),
                weight_loads=list(self._weights),
            )
        )
        return state

    @classmethod
    def from_dict(cls, data: Mapping) -> ThroughputModel:
        st = msgspec.convert(data, ThroughputState)
        out = cls(st.prior, st.prior_weight, st.window)
        out._decode.extend(st.decode)
        out._prefill.extend(st.prefill)
        out._cold.extend(st.cold_starts)
        out._weights.extend(st.weight_loads)
        out._fitted = None
        return out
