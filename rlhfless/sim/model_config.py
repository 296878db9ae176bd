"""A model the simulator was not shipped with, described by its transformers ``config.json``.

    rlhfless simulate --model path/to/config.json      # or the model's folder holding one

Parameters are counted from the architecture (a decoder of ``num_hidden_layers`` blocks):
embeddings ``V H`` (twice unless ``tie_word_embeddings``), and per block the attention
projections ``H (heads + 2 kv_heads) d + heads d H`` (``d`` = ``head_dim``, default ``H / heads``),
the MLP ``3 H I`` (gated: gate, up, down; ``2 H I`` for a plain MLP, ``hidden_act`` gelu without
a gate, as GPT-2 style models) and two norms ``2 H``. Checked against the presets'
published counts in ``tests/sim``.

How many GPUs one rollout engine spans (``tp``) follows the presets' rule: the smallest power of
two that leaves at most a quarter of a GPU's memory to weights (the rest holds KV cache and
activations): Qwen2.5-7B on one 80 GB H100, 14B on 2, 32B on 4, Llama-2-70B on 8.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhfless.sim.errors import BadSetting
from rlhfless.sim.hardware import ModelProfile

WEIGHT_SHARE_PER_GPU = 0.25  # of a GPU's memory for weights; the presets' tp follow it
_UNGATED = {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu"}
_GATED_TYPES = {"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo2"}


def is_config_path(name: str) -> bool:
    return name.endswith(".json") or Path(name).is_dir()


def _read(path: Path) -> dict:
    file = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise BadSetting(
            "model", str(path), f"a readable config.json ({exc.strerror or exc})"
        ) from None
    except json.JSONDecodeError as exc:
        raise BadSetting(
            "model", str(file), f"valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise BadSetting("model", str(file), "a JSON object")
    return data.get("text_config", data) if "num_hidden_layers" not in data else data


def _int(cfg: dict, key: str, file: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadSetting(f"{file}: {key}", value, "an integer >= 1 (a transformers config.json)")
    return value


def count_params(cfg: dict, file: str = "config.json") -> tuple[float, dict[str, int]]:
    """``(parameters, shape)`` of a decoder described by a config.json dict."""
    h = _int(cfg, "hidden_size", file)
    layers = _int(cfg, "num_hidden_layers", file)
    heads = _int(cfg, "num_attention_heads", file)
    kv = _int(cfg, "num_key_value_heads", file, heads)
    d = _int(cfg, "head_dim", file) if cfg.get("head_dim") is not None else h // heads
    vocab = _int(cfg, "vocab_size", file)
    inter = _int(cfg, "intermediate_size", file, 4 * h)
    gated = cfg.get("model_type") in _GATED_TYPES or cfg.get("hidden_act") not in _UNGATED
    attention = h * (heads + 2 * kv) * d + heads * d * h
    mlp = (3 if gated else 2) * h * inter
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    params = embeddings + layers * (attention + mlp + 2 * h) + h
    shape = {"layers": layers, "hidden": h, "kv_heads": kv, "head_dim": d, "vocab": vocab}
    return float(params), shape


def tp_for(weight_bytes: float, gpu_memory_bytes: float, gpus_per_node: int) -> int:
    """GPUs per rollout engine: the smallest power of two with at most a quarter of each GPU's
    memory in weights; more than a node's GPUs is an error naming what would fit."""
    tp = 1
    while weight_bytes / tp > WEIGHT_SHARE_PER_GPU * gpu_memory_bytes and tp < gpus_per_node:
        tp *= 2
    tp = min(tp, gpus_per_node)
    if weight_bytes / tp > 0.9 * gpu_memory_bytes:
        raise BadSetting(
            "model",
            f"{weight_bytes / 1e9:.0f} GB of weights",
            f"weights that fit on {gpus_per_node} x {gpu_memory_bytes / 1e9:.0f} GB "
            "(more GPUs per node, a larger GPU, or a smaller model)",
        )
    return tp


def model_from_config(path: str | Path, name: str = "") -> ModelProfile:
    """A :class:`ModelProfile` from a config.json (or a folder holding one); ``tp`` is 0 until
    the GPU is known (:func:`tp_for`)."""
    path = Path(path)
    cfg = _read(path)
    params, shape = count_params(cfg, str(path))
    return ModelProfile(
        name=name or (path.stem if path.suffix == ".json" else path.name),
        params=params,
        tp=0,
        dtype_bytes=2,
        source=f"config.json: {path}",
        **shape,
    )
