"""Response-length prediction: an EWMA (or windowed mean) of each prompt's lengths in earlier epochs.

What is predicted. A GRPO group of G samples of one prompt has G response lengths. Its *work* is
their sum and its *finish time* is driven by their max, so neither the mean nor the max alone is
enough. The predictor keeps, per prompt, a **length profile**: the group's sorted lengths resampled
to ``PROFILE_POINTS`` quantile points (min .. max). It averages profiles point by point over
epochs, so :meth:`LengthPredictor.predict_group` returns G predicted sorted lengths (their sum is
the predicted work, their last one the predicted max); :meth:`LengthPredictor.predict` is the
predicted **mean** per sample and :meth:`LengthPredictor.predict_max` the predicted **max**.

Averaging over epochs. ``window = 0`` (default): exponentially weighted moving average,
``p <- alpha * observed + (1 - alpha) * p`` with the first observation taken as is.
``window = w >= 1``: plain mean of the last ``w`` observed profiles (``w = 1`` reuses last epoch's
lengths, as the public re-implementation of the paper does).

Unseen prompts. Before any observation, every prompt is predicted ``default`` tokens (128 in the
public re-implementation). After some, an unseen prompt gets the per-dataset estimate: the
point-by-point median of the latest profiles of the most recent ``dataset_window`` prompts seen.

Shrinkage (``shrink = c > 0``, off by default). With few epochs a prompt's own lengths are
noisy, and a prompt that was long last epoch tends to be less long this one (regression to the
mean). ``c`` pseudo-observations of the dataset profile are mixed in: the prediction is
``(n * own + c * dataset) / (n + c)`` after ``n`` observations of the prompt.

Error. Each observation of a prompt is first compared with what the predictor said before it:
:meth:`LengthPredictor.error` reports mean absolute and relative error and the Spearman rank
correlation (ranking is what assignment needs) over the last observations.

Split-half error (:meth:`LengthPredictor.split_samples`). Until some predictions for *seen*
prompts have been scored (the first batch of a run's second epoch), how wrong a prompt's own
profile will be is unmeasured. A group of G samples already holds an estimate of it: its samples
are split at random into two halves, and the profile of one half is scored against the other, as
a second epoch of the same policy would score the profile of the first. The halves are half as
large, so this overstates the spread of the error (on the safe side); it misses a drift of the
whole batch between epochs, which the worst-case guard's scales cover
(:mod:`~rlhfless.scaling.worst_case`).
"""

from __future__ import annotations

import math
import random
import zlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from statistics import median

import msgspec

from rlhfless.scaling.errors import BadScalingInput, BadScalingSetting

PromptId = int | str
PROFILE_POINTS = 8  # quantile points kept per prompt (min, ..., max)


def resample_sorted(values: Sequence[float], points: int) -> list[float]:
    """``values`` sorted and resampled to ``points`` evenly spaced order statistics (linear)."""
    if points < 1:
        raise BadScalingInput("resample_sorted", f"points must be >= 1, got {points}")
    data = sorted(float(v) for v in values)
    if not data:
        raise BadScalingInput("resample_sorted", "no values to resample")
    if points == 1:
        return [data[-1]]
    if len(data) == 1:
        return [data[0]] * points
    out = []
    for i in range(points):
        pos = i * (len(data) - 1) / (points - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(data) - 1)
        frac = pos - lo
        out.append(data[lo] * (1.0 - frac) + data[hi] * frac)
    return out


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for t in range(i, j + 1):
            out[order[t]] = avg
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman rank correlation; None when undefined (fewer than 2 points or a constant side)."""
    if len(xs) != len(ys):
        raise BadScalingInput("spearman", f"lengths differ: {len(xs)} vs {len(ys)}")
    if len(xs) < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def expected_remaining(
    support: Sequence[float],
    produced: float,
    tail: float = 1.0,
    max_new_tokens: float | None = None,
) -> float:
    """Expected tokens still to come for a sample that has produced ``produced`` tokens so far:
    ``E[L - produced | L > produced]`` with ``L`` drawn evenly from ``support`` (the lengths the
    predictor thinks a sample of its prompt can have: :meth:`LengthPredictor.support`), at
    least 1.

    A sequence past every point of ``support`` has overrun all the evidence: its remaining length
    is taken proportional to what it has produced (``tail * produced``; the longer a generation
    has run, the longer it tends to keep running), instead of the 1 token a plain
    ``predicted - produced`` floor would give. That floor made a long straggler look almost
    finished, so a migration plan would move it onto a busy function.

    ``max_new_tokens``: the generation limit (``rollout.max_new_tokens``), when known. No sample
    outlives it, so the answer is at most ``max_new_tokens - produced`` (still at least 1). Without
    it, a straggler that is repeating itself towards the limit looked to have as much again to
    go (``tail * produced``), which made every cut of it look like it would extend the rollout.
    """
    if not (math.isfinite(produced) and produced >= 0):
        raise BadScalingInput("expected_remaining", f"produced must be >= 0, got {produced}")
    if not (math.isfinite(tail) and tail > 0):
        raise BadScalingSetting("remaining tail", tail, "a finite number > 0")
    above = [x - produced for x in support if x > produced]
    rem = sum(above) / len(above) if above else tail * produced
    limit = check_max_new_tokens(max_new_tokens)
    if limit is not None:
        rem = min(rem, limit - produced)
    return max(1.0, rem)


def check_max_new_tokens(value: float | None, name: str = "max_new_tokens") -> float | None:
    """``value`` if it is a generation limit (a number >= 1, or None: unknown)."""
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value >= 1):
        raise BadScalingSetting(name, value, "a number of tokens >= 1, or None")
    return float(value)


def length_support(profile: Sequence[float], shape: Sequence[float] = ()) -> list[float]:
    """A sample's possible lengths: its group's predicted ``profile`` plus the profile's median
    times each dataset ``shape`` ratio (sample / its prompt's median, from every prompt seen):
    a tail the prompt's own few epochs have not shown yet, e.g. a rare 10x sample."""
    pts = [float(x) for x in profile]
    if pts and shape:
        mid = float(median(pts))
        pts.extend(mid * r for r in shape)
    return pts


class ErrorSample(msgspec.Struct, frozen=True, array_like=True):
    """What was predicted for one group before its lengths were observed, and what they were."""

    seen: bool  # the prompt had been observed before
    predicted_mean: float
    actual_mean: float
    predicted_max: float
    actual_max: float


def split_half_error(
    prompt_id: PromptId, lengths: Sequence[int | float], epoch: int = 0
) -> ErrorSample | None:
    """One half of a group's samples (drawn at random, seeded by the prompt and ``epoch``) as
    the prediction of the other half (its mean and max against that half's), scored as a seen
    prompt's prediction is. None for a group of fewer than 2 samples."""
    n = len(lengths)
    if n < 2:
        return None
    order = list(range(n))
    random.Random(zlib.crc32(f"{prompt_id}:{epoch}".encode())).shuffle(order)
    half = n // 2
    known = [float(lengths[i]) for i in order[:half]]
    other = [float(lengths[i]) for i in order[half:]]
    return ErrorSample(
        seen=True,
        predicted_mean=sum(known) / len(known),
        actual_mean=sum(other) / len(other),
        predicted_max=max(known),
        actual_max=max(other),
    )


class PredictorError(msgspec.Struct, frozen=True, kw_only=True):
    """Prediction error over the last ``n`` observed groups (``seen`` of them known prompts)."""

    n: int
    seen: int
    mae_mean: float  # mean |predicted - actual| of the per-sample mean length, tokens
    rel_mean: float  # mean |predicted - actual| / max(actual, 1) of the mean length
    mae_max: float  # the same for the group max
    rel_max: float
    spearman_mean: float | None  # rank correlation of predicted vs actual mean (None: undefined)
    spearman_max: float | None


class PredictorState(msgspec.Struct, kw_only=True):
    """Everything a :class:`LengthPredictor` knows: what a checkpoint stores."""

    alpha: float
    window: int
    default: float
    shrink: float = 0.0
    dataset_window: int
    error_window: int
    profiles: dict[str, list[list[float]]] = {}  # EWMA: one profile; window w: the last <= w
    counts: dict[str, int] = {}  # observations per prompt
    dataset: list[list[float]] = []  # latest profiles of the most recent prompts
    errors: list[ErrorSample] = []
    split_errors: list[ErrorSample] = []  # split-half scores of observed groups (split_samples)


class LengthPredictor:
    """Per-prompt response-length prediction (see the module docstring for the model)."""

    def __init__(
        self,
        alpha: float = 0.5,
        window: int = 0,
        default: float = 128.0,
        *,
        shrink: float = 0.0,
        dataset_window: int = 4096,
        error_window: int = 1024,
    ) -> None:
        if not (isinstance(alpha, int | float) and 0.0 < alpha <= 1.0):
            raise BadScalingSetting(
                "predictor alpha", alpha, "in (0, 1]", "1 reuses last epoch's lengths only."
            )
        if not (isinstance(window, int) and window >= 0):
            raise BadScalingSetting(
                "predictor window", window, "an integer >= 0", "0 selects the EWMA."
            )
        if not (math.isfinite(default) and default >= 0):
            raise BadScalingSetting("predictor default", default, "a finite number >= 0 (tokens)")
        if not (math.isfinite(shrink) and shrink >= 0):
            raise BadScalingSetting(
                "predictor shrink", shrink, "a finite number >= 0 (pseudo-observations)"
            )
        for name, value in (("dataset_window", dataset_window), ("error_window", error_window)):
            if not (isinstance(value, int) and value >= 1):
                raise BadScalingSetting(f"predictor {name}", value, "an integer >= 1")
        self.alpha = float(alpha)
        self.window = window
        self.default = float(default)
        self.shrink = float(shrink)
        self.dataset_window = dataset_window
        self.error_window = error_window
        self._profiles: dict[str, list[list[float]]] = {}
        self._counts: dict[str, int] = {}
        self._dataset: deque[list[float]] = deque(maxlen=dataset_window)
        self._errors: deque[ErrorSample] = deque(maxlen=error_window)
        self._split: deque[ErrorSample] = deque(maxlen=error_window)
        self._fallback: list[float] | None = None  # cached median profile

    # ------------------------------------------------------------------ prediction

    def seen(self, prompt_id: PromptId) -> bool:
        return str(prompt_id) in self._profiles

    def __len__(self) -> int:
        return len(self._profiles)

    def profile(self, prompt_id: PromptId) -> list[float]:
        """The predicted sorted length profile (``PROFILE_POINTS`` points) of ``prompt_id``."""
        stored = self._profiles.get(str(prompt_id))
        if stored is None:
            return list(self._dataset_profile())
        if self.window == 0:
            own = list(stored[0])
        else:
            own = [sum(col) / len(stored) for col in zip(*stored, strict=True)]
        if self.shrink <= 0:
            return own
        # Shrink towards the dataset: n own observations against `shrink` pseudo-observations.
        n = self._counts.get(str(prompt_id), 1)
        if self.window:
            n = min(n, self.window)
        w = n / (n + self.shrink)
        return [w * a + (1.0 - w) * b for a, b in zip(own, self._dataset_profile(), strict=True)]

    def predict_group(self, prompt_id: PromptId, group_size: int) -> list[float]:
        """Predicted sorted lengths of a group of ``group_size`` samples of ``prompt_id``."""
        if group_size < 1:
            raise BadScalingInput("predict_group", f"group_size must be >= 1, got {group_size}")
        prof = self.profile(prompt_id)
        if group_size == 1:
            # One sample: its expected length, not the max of a group.
            return [sum(prof) / len(prof)]
        return resample_sorted(prof, group_size)

    def predict(self, prompt_id: PromptId) -> float:
        """Predicted mean response length per sample (tokens); a group's work is G times this."""
        prof = self.profile(prompt_id)
        return sum(prof) / len(prof)

    def predict_max(self, prompt_id: PromptId) -> float:
        """Predicted longest response of the prompt's group (tokens): what its finish time needs."""
        return self.profile(prompt_id)[-1]

    def dataset_profile(self) -> list[float]:
        """What a prompt never seen is predicted: the dataset's median profile (a copy)."""
        return list(self._dataset_profile())

    def _dataset_profile(self) -> list[float]:
        if not self._dataset:
            return [self.default] * PROFILE_POINTS
        if self._fallback is None:
            self._fallback = [float(median(col)) for col in zip(*self._dataset, strict=True)]
        return self._fallback

    # ------------------------------------------------------------------ observation

    def observe(self, prompt_id: PromptId, lengths: Sequence[int | float]) -> None:
        """Record one epoch's response lengths of ``prompt_id`` (its group; one or more samples)."""
        if len(lengths) == 0:
            raise BadScalingInput(f"observe({prompt_id!r})", "no lengths given")
        if not all(math.isfinite(x) and x >= 0 for x in lengths):
            raise BadScalingInput(
                f"observe({prompt_id!r})", f"lengths must be finite and >= 0, got {list(lengths)}"
            )
        key = str(prompt_id)
        actual_mean = sum(lengths) / len(lengths)
        self._errors.append(
            ErrorSample(
                seen=key in self._profiles,
                predicted_mean=self.predict(key),
                actual_mean=float(actual_mean),
                predicted_max=self.predict_max(key),
                actual_max=float(max(lengths)),
            )
        )
        split = split_half_error(key, lengths, self._counts.get(key, 0))
        if split is not None:
            self._split.append(split)
        new = resample_sorted(lengths, PROFILE_POINTS)
        stored = self._profiles.get(key)
        if stored is None:
            self._profiles[key] = [new]
        elif self.window == 0:
            a = self.alpha
            stored[0] = [a * x + (1.0 - a) * p for x, p in zip(new, stored[0], strict=True)]
        else:
            stored.append(new)
            del stored[: -self.window]
        self._counts[key] = self._counts.get(key, 0) + 1
        self._dataset.append(new)
        self._fallback = None

    def observe_many(self, groups: Mapping[PromptId, Sequence[int | float]]) -> None:
        """:meth:`observe` for each ``prompt_id -> lengths`` (one rollout's worth)."""
        for prompt_id, lengths in groups.items():
            self.observe(prompt_id, lengths)

    def error(self, last: int | None = None) -> PredictorError:
        """Error of the predictions made before the last ``last`` (default: all kept) observations."""
        samples: Iterable[ErrorSample] = self._errors
        if last is not None:
            if last < 1:
                raise BadScalingInput("error", f"last must be >= 1, got {last}")
            samples = list(self._errors)[-last:]
        s = list(samples)
        n = len(s)
        if n == 0:
            return PredictorError(
                n=0,
                seen=0,
                mae_mean=0.0,
                rel_mean=0.0,
                mae_max=0.0,
                rel_max=0.0,
                spearman_mean=None,
                spearman_max=None,
            )
        return PredictorError(
            n=n,
            seen=sum(e.seen for e in s),
            mae_mean=sum(abs(e.predicted_mean - e.actual_mean) for e in s) / n,
            rel_mean=sum(abs(e.predicted_mean - e.actual_mean) / max(e.actual_mean, 1.0) for e in s)
            / n,
            mae_max=sum(abs(e.predicted_max - e.actual_max) for e in s) / n,
            rel_max=sum(abs(e.predicted_max - e.actual_max) / max(e.actual_max, 1.0) for e in s)
            / n,
            spearman_mean=spearman([e.predicted_mean for e in s], [e.actual_mean for e in s]),
            spearman_max=spearman([e.predicted_max for e in s], [e.actual_max for e in s]),
        )

    def error_samples(self, last: int | None = None) -> list[ErrorSample]:
        """The scored predictions behind :meth:`error` (the last ``last``; default all kept):
        what :class:`~rlhfless.scaling.margin.ErrorModel` draws its margin from."""
        if last is not None and last < 1:
            raise BadScalingInput("error_samples", f"last must be >= 1, got {last}")
        s = list(self._errors)
        return s if last is None else s[-last:]

    def split_samples(self, last: int | None = None) -> list[ErrorSample]:
        """Split-half scores of the observed groups (module docstring; the last ``last``): what
        a seen prompt's own profile gets wrong, measurable before any seen prompt was scored.
        :class:`~rlhfless.scaling.margin.ErrorModel` draws from them until enough seen
        predictions are scored; :meth:`error` never includes them."""
        if last is not None and last < 1:
            raise BadScalingInput("split_samples", f"last must be >= 1, got {last}")
        s = list(self._split)
        return s if last is None else s[-last:]

    def max_observed(self) -> float | None:
        """The longest response in the scored groups and the dataset's latest profiles (None
        before any observation): an upper bound for a drawn length."""
        highs = [e.actual_max for e in self._errors] + [p[-1] for p in self._dataset]
        return max(highs) if highs else None

    def shape_ratios(self, points: int = 16) -> list[float]:
        """Quantiles of ``sample length / its prompt's median`` over the dataset's latest
        profiles: how far from its prompt's typical length a sample can land."""
        ratios: list[float] = []
        for prof in self._dataset:
            mid = median(prof)
            if mid > 0:
                ratios.extend(x / mid for x in prof)
        if not ratios:
            return []
        return resample_sorted(ratios, min(points, len(ratios)))

    def support(self, prompt_id: PromptId) -> list[float]:
        """Lengths a sample of ``prompt_id`` can have (:func:`length_support`)."""
        return length_support(self.profile(prompt_id), self.shape_ratios())

    def remaining(
        self,
        prompt_id: PromptId,
        produced: float,
        tail: float = 1.0,
        max_new_tokens: float | None = None,
    ) -> float:
        """Expected tokens still to come for a sample of ``prompt_id`` that has produced
        ``produced`` (:func:`expected_remaining`): what a migration plan should be told."""
        return expected_remaining(self.support(prompt_id), produced, tail, max_new_tokens)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> PredictorState:
        return PredictorState(
            alpha=self.alpha,
            window=self.window,
            default=self.default,
            shrink=self.shrink,
            dataset_window=self.dataset_window,
            error_window=self.error_window,
            profiles={k: [list(p) for p in v] for k, v in self._profiles.items()},
            counts=dict(self._counts),
            dataset=[list(p) for p in self._dataset],
            errors=list(self._errors),
            split_errors=list(self._split),
        )

    def to_dict(self) -> dict:
        """Plain JSON-able state for a checkpoint; :meth:`from_dict` restores it exactly."""
        state: dict = msgspec.to_builtins(self.state())  # a struct's builtins are a dict
        return state

    @classmethod
    def from_state(cls, state: PredictorState) -> LengthPredictor:
        out = cls(
            state.alpha,
            state.window,
            state.default,
            shrink=state.shrink,
            dataset_window=state.dataset_window,
            error_window=state.error_window,
        )
        out._profiles = {k: [list(p) for p in v] for k, v in state.profiles.items()}
        out._counts = dict(state.counts)
        out._dataset.extend(list(p) for p in state.dataset)
        out._errors.extend(state.errors)
        out._split.extend(state.split_errors)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> LengthPredictor:
        return cls.from_state(msgspec.convert(data, PredictorState))
