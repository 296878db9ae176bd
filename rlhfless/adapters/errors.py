"""The adapters' exceptions."""


class EngineError(RuntimeError):
    """A model directory that cannot be loaded, or inputs the engine cannot run."""
