"""Weights deltas (runtime/delta.py): exact round trips, every edge case, and bad input.

"Equal" here is bitwise (the bytes), never ``==`` (which calls -0.0 and 0.0 equal and NaN
unequal to itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rlhfless.runtime import WeightsDeltaError
from rlhfless.runtime import weights as cache
from rlhfless.runtime.delta import apply, apply_in_place, apply_to_cache, diff, wire_bytes
from rlhfless.runtime.messages import Codec, TensorChange, WeightsDelta

pytestmark = pytest.mark.timeout(60)


def bitwise_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
        for k in a
    )


def step(w: dict[str, torch.Tensor], seed: int, frac: float = 0.01) -> dict[str, torch.Tensor]:
    """A small update: ``frac`` of each tensor's elements nudged (the rest bitwise the same)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, t in w.items():
        mask = torch.rand(t.shape, generator=g) < frac
        out[k] = torch.where(mask, t + 0.01, t).to(t.dtype)
    return out


def model(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed": torch.randn(300, 64, generator=g).to(dtype),
        "block.w": torch.randn(64, 64, generator=g).to(dtype),
        "norm": torch.ones(64, dtype=dtype),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bitwise_the_new_version(dtype: torch.dtype) -> None:
    v1 = model(dtype)
    v2 = step(v1, seed=1)
    v2["norm"] = v1["norm"]  # unchanged
    v2["block.w"] = v1["block.w"] + 1  # all changed
    delta = diff(v1, v2, 2, 1)
    kinds = {k: c.kind for k, c in delta.tensors.items()}
    assert kinds == {"embed": "sparse", "block.w": "full", "norm": "same"}
    assert bitwise_equal(apply(v1, delta, held_version=1), v2)
    expected = 0.01 * 300 * 64 * (4 + v1["embed"].element_size()) + v2["block.w"].nbytes
    assert wire_bytes(delta) == pytest.approx(expected, rel=0.2)


def test_names_added_removed_reshaped_and_retyped() -> None:
    v1 = {"kept": torch.arange(10.0), "gone": torch.ones(3), "grows": torch.ones(4),
          "retyped": torch.ones(4)}  # fmt: skip
    v2 = {"kept": torch.arange(10.0), "new": torch.zeros(2), "grows": torch.ones(5),
          "retyped": torch.ones(4, dtype=torch.bfloat16)}  # fmt: skip
    delta = diff(v1, v2, 2, 1)
    assert {k: c.kind for k, c in delta.tensors.items()} == {
        "kept": "same", "new": "full", "grows": "full", "retyped": "full"
    }  # fmt: skip
    assert bitwise_equal(apply(v1, delta, 1), v2)  # "gone" is gone


def test_zero_dim_empty_and_bool_tensors() -> None:
    v1 = {"step": torch.tensor(3.0), "flag": torch.tensor(True), "empty": torch.ones(0, 4),
          "same0": torch.tensor(7, dtype=torch.int64)}  # fmt: skip
    v2 = {"step": torch.tensor(4.0), "flag": torch.tensor(False), "empty": torch.ones(0, 4),
          "same0": torch.tensor(7, dtype=torch.int64)}  # fmt: skip
    delta = diff(v1, v2, 2, 1)
    assert delta.tensors["same0"].kind == "same" and delta.tensors["empty"].kind == "same"
    assert bitwise_equal(apply(v1, delta, 1), v2)


def test_sixteen_byte_elements_go_whole_or_not_at_all() -> None:
    v1 = {"c": torch.ones(8, dtype=torch.complex128), "c0": torch.tensor(1j)}
    v2 = {"c": v1["c"].clone(), "c0": torch.tensor(2j)}
    v2["c"][3] = 2.0
    delta = diff(v1, v2, 2, 1)
    assert {k: c.kind for k, c in delta.tensors.items()} == {"c": "full", "c0": "full"}
    assert diff(v1, v1, 2, 1).tensors["c0"].kind == "same"
    assert bitwise_equal(apply(v1, delta, 1), v2)


def test_signed_zero_and_nan_payloads_are_changes_bitwise() -> None:
    v1 = {"x": torch.tensor([0.0, float("nan"), 1.0] * 100)}
    v2 = {"x": v1["x"].clone()}
    v2["x"][0] = -0.0  # == 0.0, but another bit pattern
    assert diff(v1, {"x": v1["x"].clone()}, 2, 1).tensors["x"].kind == "same"  # NaN is itself
    delta = diff(v1, v2, 2, 1)
    assert delta.tensors["x"].kind == "sparse" and delta.tensors["x"].index.tolist() == [0]
    assert bitwise_equal(apply(v1, delta, 1), v2)


def test_most_elements_changed_goes_whole() -> None:
    v1 = {"w": torch.randn(200_000)}
    v2 = {"w": v1["w"] * 1.001}  # every element (the sampled shortcut decides)
    v3 = {"w": torch.where(torch.arange(200_000) % 3 == 0, v1["w"], v1["w"] * 1.001)}
    assert diff(v1, v2, 2, 1).tensors["w"].kind == "full"
    assert diff(v1, v3, 2, 1).tensors["w"].kind == "full"  # 67% changed: sparse is larger
    assert bitwise_equal(apply(v1, diff(v1, v3, 2, 1), 1), v3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_writes_only_the_changes(dtype: torch.dtype) -> None:
    v1, held = model(dtype), model(dtype)
    v2 = step(v1, seed=2)
    storage = held["embed"].data_ptr()
    apply_in_place(held, diff(v1, v2, 2, 1), held_version=1)
    assert bitwise_equal(held, v2) and held["embed"].data_ptr() == storage


def test_through_the_codec(tmp_path: Path) -> None:
    """As an agent gets it: tensor frames, read-only buffers, a cached base."""
    v1 = model(torch.bfloat16)
    v2 = step(v1, seed=3)
    cache.save(tmp_path, 1, v1)
    codec = Codec()
    got = codec.decode(codec.encode(diff(v1, v2, 2, 1)))
    assert isinstance(got, WeightsDelta)
    apply_to_cache(tmp_path, got)
    cache.save(tmp_path / "full", 2, v2)
    assert bitwise_equal(cache.load(2, tmp_path), cache.load(2, tmp_path / "full"))
    assert cache.crcs(2, tmp_path) == cache.crcs(2, tmp_path / "full")


def test_the_cache_keeps_the_two_newest_versions(tmp_path: Path) -> None:
    for v in range(1, 5):
        cache.save(tmp_path, v, {"w": torch.full((3,), float(v))})
    assert cache.versions(tmp_path) == [3, 4]


# ------------------------------------------------------------------------- bad input


def errors(v1: dict[str, Any], delta: WeightsDelta, held: int = 1) -> str:
    with pytest.raises(WeightsDeltaError) as e:
        apply(v1, delta, held)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("send the full version")
    return msg


def corrupt(delta: WeightsDelta, name: str, **changes: Any) -> WeightsDelta:
    import msgspec

    c: TensorChange = delta.tensors[name]
    return msgspec.structs.replace(
        delta, tensors={**delta.tensors, name: msgspec.structs.replace(c, **changes)}
    )


def test_wrong_base_version() -> None:
    v1 = model(torch.float32)
    msg = errors(v1, diff(v1, step(v1, 1), 3, 2), held=1)
    assert "made against v2, this receiver holds v1" in msg


def test_same_version_number_other_bytes() -> None:
    v1 = model(torch.float32)
    other = step(v1, 9)
    msg = errors(other, diff(v1, step(v1, 1), 2, 1))
    assert "'embed' of the base held here is not the sender's v1" in msg


def test_corrupt_value_index_and_dtype() -> None:
    v1 = model(torch.bfloat16)
    delta = diff(v1, step(v1, 1), 2, 1)
    sparse = delta.tensors["embed"]
    bad_value = sparse.values.clone()
    bad_value[0] += 1
    assert "'embed' built here does not match the sender's crc" in errors(
        v1, corrupt(delta, "embed", values=bad_value)
    )
    far = sparse.index.clone()
    far[-1] = 300 * 64
    assert "a position is outside its 19200 elements" in errors(
        v1, corrupt(delta, "embed", index=far)
    )
    assert "positions for" in errors(v1, corrupt(delta, "embed", index=sparse.index[:-1]))
    assert "values are float32, expected bfloat16" in errors(
        v1, corrupt(delta, "embed", values=sparse.values.float())
    )
    assert "not an int32/int64 tensor" in errors(
        v1, corrupt(delta, "embed", index=sparse.index.float())
    )


def test_missing_base_tensor_and_shape_mismatch() -> None:
    v1 = model(torch.float32)
    delta = diff(v1, step(v1, 1), 2, 1)
    assert "'norm' is not in the base held here" in errors(
        {k: v for k, v in v1.items() if k != "norm"}, delta
    )
    assert "is float32 [65] here, float32 [64] in the delta" in errors(
        {**v1, "norm": torch.ones(65)}, delta
    )


def test_cache_without_the_base_refuses(tmp_path: Path) -> None:
    v1 = model(torch.float32)
    cache.save(tmp_path, 5, v1)
    with pytest.raises(WeightsDeltaError, match=r"this node holds no v1 \(it holds \[5\]\)"):
        apply_to_cache(tmp_path, diff(v1, step(v1, 1), 2, 1))
    assert cache.versions(tmp_path) == [5]


def test_bad_delta_leaves_in_place_weights_untouched() -> None:
    v1, held = model(torch.float32), model(torch.float32)
    delta = diff(v1, step(v1, 1), 2, 1)
    far = delta.tensors["block.w"].index.clone()
    far[0] = -1
    with pytest.raises(WeightsDeltaError, match="outside its"):
        apply_in_place(held, corrupt(delta, "block.w", index=far), held_version=1)
    assert bitwise_equal(held, v1)
