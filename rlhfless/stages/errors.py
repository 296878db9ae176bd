"""The run's own errors (the stages' modules raise theirs beside their code)."""


class RunError(RuntimeError):
    """A run that cannot start or resume (missing checkpoint, bad model directory)."""
