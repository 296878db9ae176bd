"""Every exception the scaling policy raises, in one place. Each message says what to do next.

All derive from :class:`ScalingError` (itself a ``ValueError``: every one of them is a bad input
or setting), so a caller (the pipeline, the CLI) can catch one class.
"""

from __future__ import annotations


class ScalingError(ValueError):
    """Base class of the scaling policy's errors."""


class BadScalingSetting(ScalingError):
    """A setting (λ, a threshold, a k range, a rate) outside the range where it means anything."""

    def __init__(self, name: str, value: object, expected: str, hint: str = "") -> None:
        self.name = name
        self.value = value
        self.expected = expected
        message = f"scaling setting {name} = {value!r} is invalid: it must be {expected}."
        if hint:
            message += f" {hint}"
        super().__init__(message)


class BadScalingInput(ScalingError):
    """Inputs to a policy function that cannot describe a real rollout (e.g. negative lengths)."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(
            f"{what}: {problem}. The caller built this input wrongly; fix it where it is produced."
        )
