"""Hostile `.smask` files and mask blobs: every malformed input is refused with a ConfigError, never decoded
into something else and never a traceback of another kind."""

import struct

import numpy as np
import pytest

from supermask import ConfigError, codec


def _blob(n: int, quotients: list[int], remainders: list[int], b: int, minority: int = 1) -> bytes:
    """A mask blob written by hand from its quotients and remainders (the layout in docs/smask-format.md)."""
    unary = np.ones(sum(quotients) + len(quotients), dtype=bool)
    unary[np.cumsum(np.array(quotients, dtype=np.int64) + 1) - 1] = False  # each quotient: q ones, then a zero
    u = np.packbits(unary).tobytes()
    rem = np.array([(r >> s) & 1 for r in remainders for s in range(b - 1, -1, -1)], dtype=bool)
    return struct.pack("<QQBBQ", n, len(quotients), b, minority, len(u)) + u + np.packbits(rem).tobytes()


def test_hand_written_blob_decodes_to_its_positions():
    # gaps 2 and 0 with b=1: 2 = (1 << 1) + 0, 0 = (0 << 1) + 0 -> positions 2 and 3 of 6
    bits = codec.decode(_blob(6, [1, 0], [0, 0], 1), 6)
    assert bits.tolist() == [False, False, True, True, False, False]


@pytest.mark.parametrize("n,keep", [(1, 0.0), (1, 1.0), (7, 0.5), (1000, 0.1), (1000, 0.9), (4096, 0.5)])
def test_round_trip(n, keep):
    rng = np.random.default_rng(n)
    mask = rng.random(n) < keep
    assert np.array_equal(codec.decode(codec.encode(mask), n), mask)


def test_gaps_that_overflow_int64_are_refused():
    # A 4 MB quotient of 2**25 - 1 shifted by b=39 wraps int64 to -2**39; with the remainder the first position
    # lands at -10 (a valid numpy index from the end) and the second, 11, passes the old last-position check.
    n = 1 << 22
    blob = _blob(n, [(1 << 25) - 1, 0], [(1 << 39) - 10, 20], 39)
    assert len(blob) > 4_000_000
    with pytest.raises(ConfigError):
        codec.decode(blob, n)


@pytest.mark.parametrize("blob", [
    _blob(10, [0, 0], [3, 1], 2),          # gaps 3 then 1: positions 3, 5 ... valid, used as a control below
])
def test_control_blob_is_valid(blob):
    assert np.flatnonzero(codec.decode(blob, 10)).tolist() == [3, 5]


@pytest.mark.parametrize("blob", [
    _blob(10, [5], [0], 1),                # gap 10: position 10 of a 10-bit layer
    _blob(10, [0, 0, 0], [4, 4, 4], 3),    # third position 14
    _blob(10, [0] * 11, [0] * 11, 0),      # 11 positions in 10 bits
    _blob(10, [0], [0], 0, minority=2),    # minority bit must be 0 or 1
    _blob(10, [0], [0], 45),               # b beyond the coder's range
    _blob(10, [0], [0], 1)[:-1],           # truncated remainder stream
    _blob(10, [0], [0], 1) + b"\0",        # trailing byte
])
def test_inconsistent_blobs_are_refused(blob):
    with pytest.raises(ConfigError):
        codec.decode(blob, 10)


def test_padding_bits_must_be_zero():
    good = bytearray(_blob(10, [1], [1], 1))  # unary "10", remainder "1": gap 3
    assert np.flatnonzero(codec.decode(bytes(good), 10)).tolist() == [3]
    for index, value in [(26, 0b10100000), (27, 0b11000000)]:  # a stray 1 after the last quotient / remainder
        bad = bytearray(good)
        bad[index] = value
        with pytest.raises(ConfigError):
            codec.decode(bytes(bad), 10)


def test_random_blobs_decode_consistently_or_are_refused():
    """Fuzz: flipped bits, random headers. Whatever is accepted holds exactly `count` minority bits."""
    rng = np.random.default_rng(0)
    seeds = [codec.encode(rng.random(n) < k) for n, k in [(50, 0.2), (300, 0.5), (1000, 0.95)]]
    for _ in range(600):
        blob = bytearray(seeds[rng.integers(len(seeds))])
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(len(blob))
            blob[i] ^= 1 << rng.integers(8)
        n, count, _, minority, _ = struct.unpack_from("<QQBBQ", blob)
        try:
            bits = codec.decode(bytes(blob), n if n <= 1000 else 1000)
        except ConfigError:
            continue
        assert bits.size == n and int(np.count_nonzero(bits == bool(minority))) == count
