"""Wire format: typed round trips, tensors as frames, and garbage rejected with BadMessage."""

import msgspec
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfless.runtime.errors import BadMessage
from rlhfless.runtime.messages import (
    KINDS,
    BillingEvent,
    Call,
    Codec,
    Error,
    Exited,
    Heartbeat,
    Result,
    WeightsRefused,
    billing_from_json,
    billing_to_json,
)

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)  # fmt: skip

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8,
          torch.uint8, torch.bool, torch.int32]  # fmt: skip


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    t = (torch.randn(shape) * 10).to(dtype) if dtype != torch.bool else torch.randn(shape) > 0
    if t.dim() >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # non-contiguous
    return t


@settings(max_examples=150, deadline=None)
@given(value=json_like, call_id=st.integers(0, 2**62), method=st.text(max_size=30))
def test_call_round_trip_of_plain_values(value: object, call_id: int, method: str) -> None:
    codec = Codec()
    msg = Call(call_id, method, [value], {"k": value})
    assert codec.decode(codec.encode(msg)) == msg


@settings(max_examples=150, deadline=None)
@given(ts=st.lists(tensors(), min_size=1, max_size=4))
def test_tensors_round_trip_exactly(ts: list[torch.Tensor]) -> None:
    codec = Codec()
    frames = codec.encode(Result(7, {"nested": [ts, {"x": ts[0]}]}))
    assert len(frames) == 2 + len(ts) + 1  # kind, body, one frame per tensor occurrence
    out = codec.decode(frames)
    got = out.value["nested"][0]
    for a, b in zip(ts, got, strict=True):
        assert b.dtype == a.dtype and b.shape == a.shape
        assert torch.equal(a, b)
    assert torch.equal(out.value["nested"][1]["x"], ts[0])


def test_zero_d_empty_bf16_and_noncontiguous() -> None:
    codec = Codec()
    vals = [torch.tensor(3.5), torch.empty(0, 7), torch.randn(4, 3, dtype=torch.bfloat16),
            torch.arange(24).reshape(4, 6)[:, ::2], torch.randn(3, requires_grad=True)]  # fmt: skip
    out = codec.decode(codec.encode(Result(1, vals))).value
    assert out[0].shape == () and out[0].item() == 3.5
    assert out[1].shape == (0, 7)
    assert out[2].dtype == torch.bfloat16 and torch.equal(out[2], vals[2])
    assert torch.equal(out[3], vals[3])
    assert torch.equal(out[4], vals[4].detach()) and not out[4].requires_grad


def test_large_tensor_is_not_copied_on_send() -> None:
    t = torch.randn(1 << 20)
    frames = Codec().encode(Result(1, t))
    assert frames[2].ctypes.data == t.data_ptr()  # the frame is a view of the tensor's memory


def test_every_kind_round_trips() -> None:
    codec = Codec()
    ev = BillingEvent(function_id="f", actor="a:B", node="n", slot=0, device_kind="cpu",
                      requested_at=1.0, ready_at=2.0, busy=[(2.0, 3.0)])  # fmt: skip
    for msg in [
        Heartbeat("x", 1.0, 5, 2),
        Error(-1, "ValueError", "m", "tb"),
        Exited("f", 9, -9, ["a"]),
        WeightsRefused(3, "weights delta v2 -> v3: a reason"),
    ]:
        assert codec.decode(codec.encode(msg)) == msg
    assert billing_from_json(billing_to_json(ev)) == ev
    assert set(KINDS) == set(range(1, 16))


def test_unsendable_value_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="cannot send a object"):
        Codec().encode(Result(1, object()))


@pytest.mark.parametrize(
    "frames, match",
    [
        ([b"\x04"], "at least 2"),
        ([b"", b""], "kind frame"),
        ([b"\x63", b"\x90"], "unknown message kind 99"),
        ([b"\x04", b"\xff\xfe"], "Call"),
        ([b"\x04", msgspec.msgpack.encode([1, "m", [], {}])[:-1]], "Call"),  # truncated
        ([b"\x04", msgspec.msgpack.encode(["one", "m", [], {}])], "Call"),  # wrong type
        ([b"\x07", msgspec.msgpack.encode(["s"])], "Heartbeat"),  # missing fields
    ],
)
def test_garbage_is_rejected(frames: list[bytes], match: str) -> None:
    with pytest.raises(BadMessage, match=match):
        Codec().decode(frames)


def test_tensor_frame_defects_are_rejected() -> None:
    codec = Codec()
    good = codec.encode(Result(1, torch.arange(4, dtype=torch.int64)))
    with pytest.raises(BadMessage, match="refers to frame 0"):
        codec.decode(good[:2])  # the tensor's frame is missing
    with pytest.raises(BadMessage, match="has 31 bytes"):
        codec.decode([*good[:2], bytes(31)])
    ext = msgspec.msgpack.Ext(1, msgspec.msgpack.encode((0, "float128", [1])))
    with pytest.raises(BadMessage, match="unsupported tensor dtype"):
        codec.decode([b"\x05", msgspec.msgpack.encode([1, ext]), bytes(16)])
    with pytest.raises(BadMessage, match="unknown msgpack extension"):
        codec.decode([b"\x05", msgspec.msgpack.encode([1, msgspec.msgpack.Ext(5, b"")])])
