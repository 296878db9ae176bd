"""The embedded default model: a character tokenizer made in code and a tiny causal LM.

Nothing here downloads anything. ``build_tiny_model(dir, seed)`` writes a model directory
(``config.json``, ``model.safetensors``, the tokenizer as JSON) that any function process can load
with ``HFEngine.load(dir)``; the same seed gives the same weights on every machine.

The vocabulary is deliberately small (~25 tokens): a random-init model then puts real probability
mass on the right characters, so its reward on the built-in task is nonzero from the first step and
GRPO has a signal to climb within a few dozen CPU steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TOKENIZER_FILE = "rlhfless_tokenizer.json"

# Special tokens come first so their ids are fixed whatever the alphabet is.
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
# Digits and 'x' '=' spell the built-in task's prompts ("c x 13 ="); the letters are its characters.
DEFAULT_ALPHABET = "0123456789x=abcdefgh"

# Model sizes. "tiny" is the default run (fast on 2 CPU cores); "75m" is the Qwen2-style config the
# TRL comparison benchmark uses (~75M parameters with this tiny vocabulary it is mostly layers).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "75m": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4,
    ),
}  # fmt: skip


class TokenizerError(ValueError):
    """Text the tiny tokenizer cannot encode, or a tokenizer file that is not one of ours."""


class TinyTokenizer:
    """Character-level tokenizer: one token per character of ``alphabet`` plus pad/bos/eos."""

    def __init__(self, alphabet: str = DEFAULT_ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise TokenizerError(f"alphabet {alphabet!r} repeats a character")
        self.alphabet = alphabet
        self.tokens: list[str] = [PAD, BOS, EOS, *alphabet]
        self._ids = {tok: i for i, tok in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset({self.eos_id})

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        try:
            ids = [self._ids[ch] for ch in text]
        except KeyError as e:
            raise TokenizerError(
                f"character {e.args[0]!r} is not in the tiny tokenizer's alphabet "
                f"{self.alphabet!r}; use a task whose text uses only those characters"
            ) from None
        return [self.bos_id, *ids] if add_bos else ids

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt as the model sees it: BOS then the characters."""
        return self.encode(text, add_bos=True)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        out = []
        for i in ids:
            if not 0 <= i < len(self.tokens):
                raise TokenizerError(
                    f"token id {i} is outside the vocabulary (size {self.vocab_size})"
                )
            if skip_special and i < 3:
                continue
            out.append(self.tokens[i])
        return "".join(out)

    def to_hf(self):
        """The same tokenizer as a transformers ``PreTrainedTokenizerFast`` (same ids, BOS first).

        Saved beside our JSON so that tools which only speak transformers (TRL's trainers, the
        benchmark against them) load the tiny model dir with ``AutoTokenizer``.
        """
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        vocab = {tok: i for i, tok in enumerate(self.tokens)}
        core = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
        core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        core.decoder = decoders.Fuse()
        core.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, self.bos_id)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=PAD
        )

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / TOKENIZER_FILE
        path.write_text(json.dumps({"kind": "rlhfless-char", "alphabet": self.alphabet}))
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> TinyTokenizer:
        path = Path(model_dir) / TOKENIZER_FILE
        data = json.loads(path.read_text())
        if data.get("kind") != "rlhfless-char":
            raise TokenizerError(f"{path} is not an rlhfless character tokenizer")
        return cls(data["alphabet"])


def tiny_config(tokenizer: TinyTokenizer, size: str = "tiny", max_positions: int = 256):
    """A Qwen2 config sized by ``size`` (see ``SIZES``) for ``tokenizer``'s vocabulary."""
    from transformers import Qwen2Config

    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    return Qwen2Config(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,  # half the parameters of a tiny model would be the LM head
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        **SIZES[size],
    )


def build_tiny_model(
    model_dir: str | Path,
    seed: int = 0,
    size: str = "tiny",
    alphabet: str = DEFAULT_ALPHABET,
) -> Path:
    """Write a random-init tiny causal LM and its tokenizer into ``model_dir``; return the dir.

    Deterministic: the same ``seed``/``size``/``alphabet`` give bit-identical weights.
    """
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tok = TinyTokenizer(alphabet)
    config = tiny_config(tok, size)
    # fork_rng keeps the caller's global RNG untouched; the seed alone fixes the weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_id
    model.save_pretrained(model_dir)
    tok.save(model_dir)
    tok.to_hf().save_pretrained(model_dir)
    return model_dir


def is_tiny_model_dir(model_dir: str | Path) -> bool:
    return (Path(model_dir) / TOKENIZER_FILE).is_file()
