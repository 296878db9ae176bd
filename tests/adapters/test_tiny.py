from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfless.adapters.hf import HFEngine, load_tokenizer
from rlhfless.adapters.tiny import (
    DEFAULT_ALPHABET,
    TinyTokenizer,
    TokenizerError,
    build_tiny_model,
    is_tiny_model_dir,
)


def test_tokenizer_round_trip_and_special_ids() -> None:
    tok = TinyTokenizer()
    ids = tok.encode_prompt("13xa")
    assert ids[0] == tok.bos_id
    assert tok.decode(ids) == "13xa"
    assert tok.decode([*ids, tok.eos_id, tok.pad_id]) == "13xa"
    assert tok.vocab_size == 3 + len(DEFAULT_ALPHABET) <= 32
    assert len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3


def test_tokenizer_rejects_unknown_character_naming_it() -> None:
    with pytest.raises(TokenizerError, match="'Z'"):
        TinyTokenizer().encode("aZ")


def test_tokenizer_saves_and_loads(tmp_path: Path) -> None:
    TinyTokenizer("ab12").save(tmp_path)
    tok = TinyTokenizer.load(tmp_path)
    assert tok.alphabet == "ab12"
    assert is_tiny_model_dir(tmp_path)


def test_build_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = load_file(build_tiny_model(tmp_path / "a", seed=1) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=1) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", seed=2) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_model_dir_loads_into_engine(tiny_dir: Path) -> None:
    engine = HFEngine.load(tiny_dir)
    assert isinstance(engine.tokenizer, TinyTokenizer)
    assert engine.model.config.vocab_size == engine.tokenizer.vocab_size
    assert isinstance(load_tokenizer(tiny_dir), TinyTokenizer)


def test_hf_tokenizer_export_gives_the_same_ids(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf, tok = AutoTokenizer.from_pretrained(tiny_dir), TinyTokenizer.load(tiny_dir)
    for text in ["13xa", "7xbbb", DEFAULT_ALPHABET]:
        assert hf(text)["input_ids"] == tok.encode_prompt(text)
        assert hf.decode(tok.encode_prompt(text), skip_special_tokens=True) == text
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)


def test_plain_transformers_dir_loads_with_its_own_tokenizer(
    tiny_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from rlhfless.adapters.hf import HFTokenizer

    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    (plain / "rlhfless_tokenizer.json").unlink()
    engine = HFEngine.load(plain)
    assert isinstance(engine.tokenizer, HFTokenizer)
    ids = engine.tokenizer.encode_prompt("13xa")
    assert ids == TinyTokenizer().encode_prompt("13xa")
    assert engine.tokenizer.eos_ids == {2}
    gen = engine.generate([ids], group_size=2, max_new_tokens=8, seed=0)
    assert len(gen.samples) == 2
