"""Near-entropy coding of a bit mask: Rice codes of the gaps between the minority bits.

A mask of n bits with keep fraction k carries at least n * H(k) bits of information. Listing the positions of
the rarer value (kept if k <= 1/2, else pruned) as gaps, each gap is close to geometric, and a Rice code (unary
quotient, b-bit remainder) of a geometric source is within a few percent of its entropy for the best b. The
quotients and remainders go in two separate bit streams so both encode and decode are vectorized.

Blob layout: a head, then the quotient stream, then the remainder stream (count * b bits). The head of format
version 1 files ("wide", 26 bytes, little-endian): n (u64), count (u64), b (u8), minority bit (u8),
quotient-stream bytes (u64). From version 2 ("compact", 3 to 5 bytes for most layers): count (varint), b << 1 |
minority (u8), quotient-stream bytes (varint); n is the layer's own size, which the reader knows. A small layer's
mask is then within a few percent of its entropy bound too, where 26 bytes were most of its cost.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from supermask.errors import ConfigError

_HEAD = struct.Struct("<QQBBQ")
HEAD_BYTES = _HEAD.size  # the wide (version 1) head
HEADS = ("wide", "compact")
_MAX_B = 40
MAX_BITS = 1 << 31  # bits per mask: keeps every sum of gaps below 2**62


def entropy_bits(n: int, kept: int) -> float:
    """n * H(kept / n): the information in a mask with that many kept bits."""
    if kept in (0, n):
        return 0.0
    k = kept / n
    return n * -(k * math.log2(k) + (1 - k) * math.log2(1 - k))


def _gaps(bits: np.ndarray, minority: int) -> np.ndarray:
    positions = np.flatnonzero(bits == minority).astype(np.int64)
    return np.diff(positions, prepend=-1) - 1


def _best_b(gaps: np.ndarray) -> int:
    if gaps.size == 0:
        return 0
    costs = [int((gaps >> b).sum()) + gaps.size * (1 + b) for b in range(_MAX_B)]
    return int(np.argmin(costs))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(blob: bytes, at: int) -> tuple[int, int]:
    """(value, the offset after it); at most 9 bytes (values below 2**63), and in its shortest form, so that a blob
    has one reading."""
    value = 0
    for i in range(at, min(len(blob), at + 9)):
        value |= (blob[i] & 0x7F) << (7 * (i - at))
        if not blob[i] & 0x80:
            if blob[i] == 0 and i > at:
                raise ConfigError("mask blob head has a number in a longer form than it needs")
            return value, i + 1
    raise ConfigError("mask blob head is truncated")


def _pack_head(n: int, count: int, b: int, minority: int, u_len: int, head: str) -> bytes:
    if head == "wide":
        return _HEAD.pack(n, count, b, minority, u_len)
    return _varint(count) + bytes([b << 1 | minority]) + _varint(u_len)


def _unpack_head(blob: bytes, head: str, expected_n: int) -> tuple[int, int, int, int, int, int]:
    """(n, count, b, minority, quotient-stream bytes, head bytes) of a blob."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}: expected one of {', '.join(HEADS)}")
    if head == "wide":
        if len(blob) < _HEAD.size:
            raise ConfigError("mask blob is truncated")
        return (*_HEAD.unpack_from(blob), _HEAD.size)
    count, at = _read_varint(blob, 0)
    if at >= len(blob):
        raise ConfigError("mask blob is truncated")
    packed = blob[at]
    u_len, end = _read_varint(blob, at + 1)
    return expected_n, count, packed >> 1, packed & 1, u_len, end


def head_bytes(blob: bytes, n: int, head: str = "compact") -> int:
    """The size of a blob's head: what a mask costs besides its codes."""
    return _unpack_head(blob, head, n)[-1]


def encode(mask: np.ndarray, head: str = "compact") -> bytes:
    """Encode a boolean array (any shape; its flattened order) into a compact blob, with the given head (wide:
    the .smask format version 1's)."""
    bits = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    n = bits.size
    minority = int(np.count_nonzero(bits) <= n // 2)  # list the positions of the rarer value
    gaps = _gaps(bits, minority)
    b = _best_b(gaps)
    q = gaps >> b
    unary = np.ones(int(q.sum()) + gaps.size, dtype=bool)
    unary[np.cumsum(q + 1) - 1] = False  # each quotient: q ones, then a zero
    rem = ((gaps[:, None] >> np.arange(b - 1, -1, -1)) & 1).astype(bool).reshape(-1)
    u = np.packbits(unary).tobytes()
    return _pack_head(n, gaps.size, b, minority, len(u), head) + u + np.packbits(rem).tobytes()


def decode(blob: bytes, expected_n: int, head: str = "compact") -> np.ndarray:
    """The flat boolean mask of `encode` for a layer of `expected_n` weights (so nothing larger is ever
    allocated); a malformed blob raises ConfigError.

    Every gap is checked before the positions are summed (so the sum cannot overflow int64), which makes the
    positions strictly increasing and inside the layer; padding bits must be zero, so a blob has one reading.
    """
    n, count, b, minority, u_len, start = _unpack_head(blob, head, expected_n)
    if n != expected_n:
        raise ConfigError(f"mask blob holds {n} bits where the layer has {expected_n}")
    if n > MAX_BITS or count > n or b >= _MAX_B or minority > 1:
        raise ConfigError("mask blob header is inconsistent")
    # a quotient is at most n >> b, so the unary stream holds at most n + count bits
    r_len = (count * b + 7) // 8
    if u_len > (n + count + 7) // 8 or start + u_len + r_len != len(blob):
        raise ConfigError("mask blob has the wrong length")
    unary = np.unpackbits(np.frombuffer(blob, np.uint8, u_len, start))
    zeros = np.flatnonzero(unary == 0)[:count]
    if zeros.size != count:
        raise ConfigError("mask blob quotient stream is truncated")
    used = int(zeros[-1]) + 1 if count else 0
    rem_bits = np.unpackbits(np.frombuffer(blob, np.uint8, r_len, start + u_len))
    if u_len != (used + 7) // 8 or unary[used:].any() or rem_bits[count * b:].any():
        raise ConfigError("mask blob has stray bits after its codes")
    q = np.diff(zeros, prepend=-1) - 1
    if count and int(q.max()) > n >> b:
        raise ConfigError("mask blob points past the end of the layer")
    r = (rem_bits[: count * b].reshape(count, b).astype(np.int64) << np.arange(b - 1, -1, -1)).sum(axis=1) if b else 0
    gaps = (q << b) + r  # q << b <= n and r < 2**b: no overflow
    if count and int(gaps.max()) >= n:
        raise ConfigError("mask blob points past the end of the layer")
    positions = np.cumsum(gaps + 1) - 1  # at most count * n <= 2**62; strictly increasing as every gap >= 0
    if count and positions[-1] >= n:
        raise ConfigError("mask blob points past the end of the layer")
    bits = np.full(n, not minority, dtype=bool)
    bits[positions] = bool(minority)
    return bits
