"""Messages from the child to the grader: length-prefixed ``torch.save`` blobs, read back with
``weights_only=True`` so a message can carry tensors and plain data, never code."""

from __future__ import annotations

import io
import os
import struct
from typing import Any

import torch
from torch import Tensor, nn

MAX_MESSAGE_BYTES = 64 * 2**20


class ProtocolError(Exception):
    pass


def encode(msg: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(msg, buf)
    data = buf.getvalue()
    return struct.pack("<Q", len(data)) + data


def decode_stream(read_exactly) -> Any:
    header = read_exactly(8)
    if header is None:
        return None
    (n,) = struct.unpack("<Q", header)
    if n > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {n} bytes is over the limit")
    data = read_exactly(n)
    if data is None:
        raise ProtocolError("truncated message")
    msg = torch.load(io.BytesIO(data), weights_only=True)
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise ProtocolError("malformed message")
    return msg


def reader(fd: int):
    """A ``read_exactly(n)`` over a file descriptor: bytes, or None at a clean end of stream."""

    def read_exactly(n: int) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                if got == 0:
                    return None
                raise ProtocolError("truncated message")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    return read_exactly


# ----- values: the child sends only plain data; anything else becomes a description -------------
UNSUPPORTED = "__unsupported_type__"


def to_wire(x: Any, depth: int = 0) -> Any:
    if type(x) is Tensor or type(x) is nn.Parameter:
        return x.detach().clone().contiguous()
    if isinstance(x, Tensor):
        return {UNSUPPORTED: f"{type(x).__name__} (a tensor subclass, which is not accepted)"}
    if type(x) in (int, float, bool, str) or x is None:
        return x
    if type(x) in (tuple, list) and depth < 3 and len(x) <= 16:
        items = [to_wire(v, depth + 1) for v in x]
        return tuple(items) if type(x) is tuple else items
    return {UNSUPPORTED: type(x).__name__}


class _Described:
    """Stands in for a value the child could not send (e.g. a lookalike object)."""


def from_wire(x: Any) -> Any:
    if isinstance(x, dict) and set(x) == {UNSUPPORTED}:
        return type(str(x[UNSUPPORTED]).split(" ")[0] or "object", (_Described,), {})()
    if isinstance(x, (tuple, list)):
        items = [from_wire(v) for v in x]
        return tuple(items) if isinstance(x, tuple) else items
    return x
