"""The runtime's vocabulary: every message on every socket, as msgspec structs.

Wire format of one message (a ZeroMQ multipart message):

    [kind: 1 byte] [body: msgpack of the struct for that kind] [tensor frame 0] [tensor frame 1] ...

The kind byte selects the struct type, and so the typed decoder. Tensors anywhere inside a
body (call arguments, results, nested in lists or dicts) are replaced by a msgpack extension
holding a small header ``(frame index, dtype, shape)``; their bytes travel as separate frames
that are sent and received without copying. Nothing here ever pickles.

This module is pure (no sockets, no processes) so any package may import it; the cost models
import :class:`BillingEvent` from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from rlhfless.runtime.errors import BadMessage

# ---------------------------------------------------------------------------------------------
# Message structs. Field order is the wire order (array_like keeps bodies small and fast).


# In a Spawn's env: "1" asks the function to keep to its CPU slot's own cores (Runtime.spawn's
# pin_cores); the runtime sets CPU_SLOTS_ENV on a node of CPU slots (how many it has).
PIN_CORES_ENV = "RLHFLESS_PIN_CORES"
CPU_SLOTS_ENV = "RLHFLESS_CPU_SLOTS"


class Spawn(msgspec.Struct, array_like=True, frozen=True):
    """Controller -> zygote: fork a function that hosts ``actor`` on ``slot``."""

    function_id: str
    actor: str  # "package.module:ClassName", imported in the function, never pickled
    endpoint: str  # where the function's DEALER connects (the controller's ROUTER)
    slot: int
    env: dict[str, str]  # set before the actor's module is imported (CUDA_VISIBLE_DEVICES, ...)
    threads: int  # intra-op threads for torch/OpenMP/MKL in the function
    # The controller's import context, so an actor in the user's own module (next to their
    # script, or in their working directory) resolves as it does in the controller, whatever
    # directory the zygote started in. Empty for a function on another machine: its paths are
    # not this machine's, and the agent's own installation resolves the actor there.
    sys_path: list[str] = []  # absolute entries, in the controller's order
    cwd: str = ""  # the controller's working directory ("" = leave the function's as is)


class Init(msgspec.Struct, array_like=True, frozen=True):
    """Controller -> function: construct the actor with these arguments (may carry tensors)."""

    args: list[Any]
    kwargs: dict[str, Any]


class Ready(msgspec.Struct, array_like=True, frozen=True):
    """Function -> controller: the actor is constructed and serving."""

    function_id: str
    pid: int
    methods: list[str]  # public methods, so a proxy can reject a typo without a round trip
    import_seconds: float  # time to import the actor's module
    init_seconds: float  # time in the actor's __init__


class Call(msgspec.Struct, array_like=True, frozen=True):
    """Controller -> function: run ``method(*args, **kwargs)``."""

    call_id: int
    method: str
    args: list[Any]
    kwargs: dict[str, Any]


class Result(msgspec.Struct, array_like=True, frozen=True):
    """Function -> controller: the return value of call ``call_id``."""

    call_id: int
    value: Any


class Error(msgspec.Struct, array_like=True, frozen=True):
    """Function -> controller: call ``call_id`` raised (``call_id`` < 0: the actor's __init__ or import)."""

    call_id: int
    type: str  # qualified name of the remote exception class
    message: str
    traceback: str


class Heartbeat(msgspec.Struct, array_like=True, frozen=True):
    """Either way: a liveness ping. Functions send one periodically with their counters."""

    sender: str
    sent_at: float
    pid: int = 0
    bad_messages: int = 0  # garbage the sender has rejected so far


class Release(msgspec.Struct, array_like=True, frozen=True):
    """Controller -> function or zygote: finish in-flight work and exit."""

    reason: str = ""


class Exited(msgspec.Struct, array_like=True, frozen=True):
    """Zygote -> controller: a function process ended (the zygote is its parent and reaps it)."""

    function_id: str
    pid: int
    exit_code: int  # negative: killed by that signal (-9 for SIGKILL and the OOM killer)
    stderr_tail: list[str]


class BillingEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a cost model needs about one function process's life. No prices here.

    Times are Unix seconds from the controller's clock. A function that never became ready has
    ``ready_at = None``; one still alive has ``exited_at = None``. ``leases`` are the periods a
    caller held the function (spawn -> release); time alive outside leases is warm-pool idle.
    ``busy`` intervals never overlap (concurrent calls are merged into one interval).
    """

    function_id: str
    actor: str
    stage: str = ""
    node: str
    slot: int
    slots: int = 1  # device slots held (a tensor-parallel function holds several)
    device_kind: str  # "cpu", "h100", "a100", "l40s", ...
    requested_at: float
    ready_at: float | None = None
    busy: list[tuple[float, float]] = []
    leases: list[tuple[float, float]] = []
    released_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    warm_starts: int = 0  # spawns served by this process from the warm pool


class Billing(msgspec.Struct, array_like=True, frozen=True):
    """Agent -> controller: a billing event, forwarded across machines (see issue 8)."""

    event: BillingEvent


class NodeHello(msgspec.Struct, array_like=True, frozen=True):
    """Agent -> controller: this node's devices (the answer to every controller heartbeat)."""

    node: str
    slots: int
    device_kind: str
    gpu: bool
    cores: int
    pid: int
    weight_versions: list[int] = []  # policy weight versions in this node's cache


class Kill(msgspec.Struct, array_like=True, frozen=True):
    """Controller -> agent: kill one of the agent's functions (by pid; the agent checks it owns it)."""

    function_id: str
    pid: int
    signal: int = 9


class Weights(msgspec.Struct, array_like=True, frozen=True):
    """Controller -> agent: policy weights of ``version``, cached node-locally (tensor frames)."""

    version: int
    tensors: dict[str, Any]


class TensorChange(msgspec.Struct, array_like=True, frozen=True):
    """One tensor of a :class:`WeightsDelta`: how to build it from the base's tensor of that
    name (``delta.py``). "same": the base's bytes; "sparse": the base with ``values`` written at
    the flat positions ``index``; "full": ``values`` is the whole tensor."""

    kind: Literal["same", "sparse", "full"]
    dtype: str
    shape: list[int]
    crc: int  # crc32 of the new tensor's bytes: the receiver checks what it built against it
    base_crc: int = 0  # crc32 of the base tensor the change was made against (same, sparse)
    index: Any = None  # sparse: 1-d int32/int64 tensor of flat element positions
    values: Any = None  # sparse: the new elements at ``index``; full: the tensor itself


class WeightsDelta(msgspec.Struct, array_like=True, frozen=True):
    """Controller -> agent: policy weights of ``version`` as changes against ``base``, a version
    the node said it holds. Names absent from ``tensors`` are not in ``version``."""

    version: int
    base: int
    tensors: dict[str, TensorChange]


class WeightsRefused(msgspec.Struct, array_like=True, frozen=True):
    """Agent -> controller: a :class:`WeightsDelta` could not be applied (``reason``, one line);
    nothing was cached, and the controller sends the full version instead."""

    version: int
    reason: str


# ---------------------------------------------------------------------------------------------
# Kind bytes: the first frame of every message.

KINDS: dict[int, type[msgspec.Struct]] = {
    1: Spawn,
    2: Init,
    3: Ready,
    4: Call,
    5: Result,
    6: Error,
    7: Heartbeat,
    8: Release,
    9: Exited,
    10: Billing,
    11: NodeHello,
    12: Kill,
    13: Weights,
    14: WeightsDelta,
    15: WeightsRefused,
}
KIND_OF: dict[type[msgspec.Struct], bytes] = {cls: bytes([k]) for k, cls in KINDS.items()}

# ---------------------------------------------------------------------------------------------
# Tensors as out-of-band frames.

_TENSOR_EXT = 1
_TORCH_DTYPES: dict[str, Any] = {}


def _torch_dtype(name: str) -> Any:
    if not _TORCH_DTYPES:
        import torch

        for dt in (
            torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
            torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64,
            torch.complex128,
        ):  # fmt: skip
            _TORCH_DTYPES[str(dt).removeprefix("torch.")] = dt
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise BadMessage(f"unsupported tensor dtype {name!r}") from None


_header_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(tuple[int, str, list[int]])


class _Encoder:
    """msgpack encoder that pulls torch tensors out into frames (zero-copy for large tensors)."""

    def __init__(self) -> None:
        self._frames: list[Any] = []
        self._encoder = msgspec.msgpack.Encoder(enc_hook=self._hook)

    def _hook(self, obj: Any) -> Any:
        torch = _torch_if_loaded()
        if torch is not None and isinstance(obj, torch.Tensor):
            t = obj.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            # Raw bytes of a contiguous copy (a no-op when already contiguous). Viewing as uint8
            # works for every dtype numpy lacks (bf16) and for 0-d and empty tensors.
            raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
            index = len(self._frames)
            self._frames.append(raw)
            header = _header_encoder.encode(
                (index, str(t.dtype).removeprefix("torch."), list(t.shape))
            )
            return msgspec.msgpack.Ext(_TENSOR_EXT, header)
        if isinstance(obj, tuple):  # pragma: no cover - msgspec encodes tuples natively
            return list(obj)
        raise TypeError(
            f"cannot send a {type(obj).__qualname__} over the runtime: use msgpack types "
            "(None, bool, int, float, str, bytes, list, tuple, dict), msgspec structs or torch tensors"
        )

    def encode(self, msg: msgspec.Struct) -> list[Any]:
        self._frames = []
        body = self._encoder.encode(msg)
        frames = [KIND_OF[type(msg)], body, *self._frames]
        self._frames = []
        return frames


def _torch_if_loaded() -> Any:
    import sys

    return sys.modules.get("torch")


class _Decoder:
    """Typed decoders, one per kind; tensor extensions are rebuilt from the trailing frames."""

    def __init__(self) -> None:
        self._frames: Sequence[Any] = ()
        self._decoders = {
            k: msgspec.msgpack.Decoder(cls, ext_hook=self._ext_hook) for k, cls in KINDS.items()
        }

    def _ext_hook(self, code: int, data: memoryview) -> Any:
        if code != _TENSOR_EXT:
            raise BadMessage(f"unknown msgpack extension type {code}")
        index, dtype_name, shape = _header_decoder.decode(data)
        if not 0 <= index < len(self._frames):
            raise BadMessage(f"tensor refers to frame {index}, message has {len(self._frames)}")
        import torch

        dtype = _torch_dtype(dtype_name)
        frame = self._frames[index]
        buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        numel = 1
        for s in shape:
            if s < 0:
                raise BadMessage(f"negative tensor dimension in shape {shape}")
            numel *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if buf.nbytes != numel * itemsize:
            raise BadMessage(
                f"tensor frame {index} has {buf.nbytes} bytes, shape {shape} of {dtype_name} needs "
                f"{numel * itemsize}"
            )
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        with warnings.catch_warnings():
            # ZeroMQ frames are read-only buffers; the tensor shares them (no copy). Writing to
            # it is safe in practice (the memory is ours), so silence torch's warning.
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(buf, dtype=torch.uint8)
        return flat.view(dtype).reshape(shape)

    def decode(self, frames: Sequence[Any]) -> msgspec.Struct:
        """Decode ``[kind, body, *tensor_frames]``; raises :class:`BadMessage` on any defect."""
        if len(frames) < 2:
            raise BadMessage(f"message has {len(frames)} frame(s), needs at least 2")
        kind_frame = _as_bytes(frames[0])
        if len(kind_frame) != 1:
            raise BadMessage(f"kind frame has {len(kind_frame)} bytes, expected 1")
        decoder = self._decoders.get(kind_frame[0])
        if decoder is None:
            raise BadMessage(f"unknown message kind {kind_frame[0]}")
        self._frames = frames[2:]
        try:
            body = frames[1]
            return decoder.decode(body.buffer if hasattr(body, "buffer") else body)
        except BadMessage:
            raise
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
            raise BadMessage(f"{KINDS[kind_frame[0]].__name__}: {exc}") from None
        finally:
            self._frames = ()


def _as_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


class Codec:
    """Encoder and decoder for one process. Not thread-safe: use one per thread or event loop."""

    def __init__(self) -> None:
        self._enc = _Encoder()
        self._dec = _Decoder()

    def encode(self, msg: msgspec.Struct) -> list[Any]:
        """Struct -> frames ``[kind, body, *tensor frames]`` ready for ``send_multipart``."""
        return self._enc.encode(msg)

    def decode(self, frames: Sequence[Any]) -> msgspec.Struct:
        """Frames -> struct of the type the kind byte names; :class:`BadMessage` on garbage."""
        return self._dec.decode(frames)


def billing_to_json(event: BillingEvent) -> bytes:
    """One JSONL line (without the newline)."""
    return msgspec.json.encode(event)


def billing_from_json(line: bytes | str) -> BillingEvent:
    return msgspec.json.decode(line, type=BillingEvent)
