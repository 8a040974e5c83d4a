"""Hostile `.smask` files and mask blobs: every malformed input is refused with a ConfigError, never decoded
into something else and never a traceback of another kind."""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from supermask import ConfigError, codec
from supermask.run.checkpoint import save_checkpoint
from supermask.run.config import dump_yaml, make_config
from supermask.core.convert import masked_layers, random_weight
from supermask.data import load_dataset
from supermask.export.smask import MAGIC, export_run, load, read
from supermask.run.train import build, make_optimizer, new_state, place


def _blob(n: int, quotients: list[int], remainders: list[int], b: int, minority: int = 1) -> bytes:
    """A mask blob written by hand from its quotients and remainders (the layout in docs/smask-format.md)."""
    unary = np.ones(sum(quotients) + len(quotients), dtype=bool)
    unary[np.cumsum(np.array(quotients, dtype=np.int64) + 1) - 1] = False  # each quotient: q ones, then a zero
    u = np.packbits(unary).tobytes()
    rem = np.array([(r >> s) & 1 for r in remainders for s in range(b - 1, -1, -1)], dtype=bool)
    return struct.pack("<QQBBQ", n, len(quotients), b, minority, len(u)) + u + np.packbits(rem).tobytes()


def test_hand_written_blob_decodes_to_its_positions():
    # gaps 2 and 0 with b=1: 2 = (1 << 1) + 0, 0 = (0 << 1) + 0 -> positions 2 and 3 of 6
    bits = codec.decode(_blob(6, [1, 0], [0, 0], 1), 6, "wide")
    assert bits.tolist() == [False, False, True, True, False, False]


@pytest.mark.parametrize("n,keep", [(1, 0.0), (1, 1.0), (7, 0.5), (1000, 0.1), (1000, 0.9), (4096, 0.5)])
def test_round_trip(n, keep):
    rng = np.random.default_rng(n)
    mask = rng.random(n) < keep
    for head in codec.HEADS:
        assert np.array_equal(codec.decode(codec.encode(mask, head), n, head), mask)


def test_gaps_that_overflow_int64_are_refused():
    # A 4 MB quotient of 2**25 - 1 shifted by b=39 wraps int64 to -2**39; with the remainder the first position
    # lands at -10 (a valid numpy index from the end) and the second, 11, passes the old last-position check.
    n = 1 << 22
    blob = _blob(n, [(1 << 25) - 1, 0], [(1 << 39) - 10, 20], 39)
    assert len(blob) > 4_000_000
    with pytest.raises(ConfigError):
        codec.decode(blob, n, "wide")


@pytest.mark.parametrize("blob", [
    _blob(10, [0, 0], [3, 1], 2),          # gaps 3 then 1: positions 3, 5 ... valid, used as a control below
])
def test_control_blob_is_valid(blob):
    assert np.flatnonzero(codec.decode(blob, 10, "wide")).tolist() == [3, 5]


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
        codec.decode(blob, 10, "wide")


def test_padding_bits_must_be_zero():
    good = bytearray(_blob(10, [1], [1], 1))  # unary "10", remainder "1": gap 3
    assert np.flatnonzero(codec.decode(bytes(good), 10, "wide")).tolist() == [3]
    for index, value in [(26, 0b10100000), (27, 0b11000000)]:  # a stray 1 after the last quotient / remainder
        bad = bytearray(good)
        bad[index] = value
        with pytest.raises(ConfigError):
            codec.decode(bytes(bad), 10, "wide")


def test_random_blobs_decode_consistently_or_are_refused():
    """Fuzz: flipped bits, random headers. Whatever is accepted holds exactly `count` minority bits."""
    rng = np.random.default_rng(0)
    seeds = [codec.encode(rng.random(n) < k, "wide") for n, k in [(50, 0.2), (300, 0.5), (1000, 0.95)]]
    for _ in range(600):
        blob = bytearray(seeds[rng.integers(len(seeds))])
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(len(blob))
            blob[i] ^= 1 << rng.integers(8)
        n, count, _, minority, _ = struct.unpack_from("<QQBBQ", blob)
        try:
            bits = codec.decode(bytes(blob), n if n <= 1000 else 1000, "wide")
        except ConfigError:
            continue
        assert bits.size == n and int(np.count_nonzero(bits == bool(minority))) == count


# ---------------------------------------------------------------------------------------------------------------- #
# Whole files, resealed with a valid checksum so that only the validation past the checksum can refuse them


def _fake_run(out: Path, **overrides) -> Path:
    """A run directory as `train` leaves it, without training: a ResNet-18 (width 1/16, BatchNorm statistics moved
    off their initial values) searched with Biprop, one layer's kept weights changed as IWR or IteRand would."""
    cfg = make_config(None, {"model": "resnet18", "dataset": "digits", "width": 0.0625, "method": "biprop",
                             "prune_rate": 0.5, "epochs": 1, "out_dir": str(out), **overrides})
    ds = load_dataset("digits")
    model = place(build(cfg, ds), cfg, torch.device("cpu"))
    with torch.no_grad():
        model.train()(torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1)
        _, layer, p = next(iter(masked_layers(model)))
        random_weight(layer)[p.mask()] += 0.5
    out.mkdir()
    (out / "config.yaml").write_text(dump_yaml(cfg))
    save_checkpoint(out / "checkpoint.safetensors", model, make_optimizer(cfg, model), new_state())
    (out / "summary.json").write_text(json.dumps({"test_acc": 0.5, "num_classes": 10, "in_channels": 1,
                                                  "image_size": 8}))
    return out


@pytest.fixture(scope="module")
def smask(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    path = root / "net.smask"
    export_run(_fake_run(root / "run"), path)
    return path


def _split(data: bytes) -> tuple[dict, bytes]:
    (head_len,) = struct.unpack_from("<I", data, 12)
    return json.loads(data[16:16 + head_len]), data[16 + head_len:-32]


def _seal(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    body = MAGIC + struct.pack("<II", 1, len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def _outcome(tmp_path: Path, data: bytes) -> str:
    """'refused' (a ConfigError) or 'loaded'; any other exception fails the test."""
    path = tmp_path / "case.smask"
    path.write_bytes(data)
    try:
        load(path)
    except ConfigError:
        return "refused"
    return "loaded"


def test_the_fixture_file_loads_and_stores_what_the_fuzz_edits(smask):
    header, _ = read(smask)
    assert any("running_mean" in t["key"] for t in header["tensors"]) and any("changed" in e for e in header["layers"])
    assert all("alpha" in e for e in header["layers"])
    load(smask)


def test_a_file_without_its_batchnorm_statistics_is_refused(smask, tmp_path):
    header, payload = _split(smask.read_bytes())
    header["tensors"] = [t for t in header["tensors"] if "running" not in t["key"]]
    with pytest.raises(ConfigError, match="stored tensors do not match the architecture.*missing"):
        (tmp_path / "x.smask").write_bytes(_seal(header, payload))
        load(tmp_path / "x.smask")


EDITS = {
    "one tensor left out": lambda h: h["tensors"].pop(7),
    "a tensor twice": lambda h: h["tensors"].append(dict(h["tensors"][3])),
    "an unknown tensor": lambda h: h["tensors"].append({**h["tensors"][3], "key": "fc.bias"}),
    "a tensor of another dtype": lambda h: h["tensors"][3].update(dtype="float64"),
    "a tensor with a short blob": lambda h: h["tensors"][3]["data"].__setitem__(1, h["tensors"][3]["data"][1] - 4),
    "a layer twice": lambda h: h["layers"].append(dict(h["layers"][2])),
    "a layer left out": lambda h: h["layers"].pop(2),
    "kept one more": lambda h: h["layers"][2].update(kept=h["layers"][2]["kept"] + 1),
    "kept one fewer": lambda h: h["layers"][2].update(kept=h["layers"][2]["kept"] - 1),
    "a layer without its alpha": lambda h: h["layers"][2].pop("alpha"),
    "changed without values": lambda h: next(e for e in h["layers"] if "changed" in e).pop("changed_values"),
    "an int among the layers": lambda h: h["layers"].append(5),
    "a string among the tensors": lambda h: h["tensors"].insert(0, "x"),
    "layers not a list": lambda h: h.update(layers={"a": 1}),
    "tensors null": lambda h: h.update(tensors=None),
    "a field the format lacks": lambda h: h["layers"][0].update(extra=1),
    "a negative blob offset": lambda h: h["layers"][0]["mask"].__setitem__(0, -1),
    "a blob range past the payload": lambda h: h["layers"][0].update(mask=[h["payload_length"], 1]),
    "a float seed": lambda h: h.update(weight_seed=0.5),
    "skip_layers a string": lambda h: h.update(skip_layers="first"),
    "an infinite width": lambda h: h.update(width=float("inf")),
    "another format": lambda h: h.update(format="other"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_inconsistent_headers_are_refused(smask, tmp_path, edit):
    header, payload = _split(smask.read_bytes())
    EDITS[edit](header)
    assert _outcome(tmp_path, _seal(header, payload)) == "refused"


def test_a_kept_count_that_disagrees_with_the_mask_is_refused(smask, tmp_path):
    """The header's count agrees with the prune rate, but the mask blob is another layer's with another count."""
    header, payload = _split(smask.read_bytes())
    a, b = header["layers"][1], header["layers"][-1]
    assert a["kept"] != b["kept"]
    a["mask"] = b["mask"]
    assert _outcome(tmp_path, _seal(header, payload)) == "refused"


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))
    else:
        yield path


def test_random_values_in_the_header_never_give_a_traceback(smask, tmp_path):
    header, payload = _split(smask.read_bytes())
    leaves = list(_leaves(header))
    junk = [None, "x", -1, 0, 1.5, [], {}, True, 2 ** 70, [1, 2, 3], {"a": None}]
    rng = np.random.default_rng(0)
    outcomes = []
    for _ in range(60):
        h = json.loads(json.dumps(header))
        *parents, last = leaves[rng.integers(len(leaves))]
        node = h
        for key in parents:
            node = node[key]
        node[last] = junk[rng.integers(len(junk))]
        outcomes.append(_outcome(tmp_path, _seal(h, payload)))
    assert outcomes.count("refused") > 40  # most edits break the file; a few (label, test_acc) are harmless


def test_random_payload_bits_never_give_a_traceback(smask, tmp_path):
    header, payload = _split(smask.read_bytes())
    rng = np.random.default_rng(1)
    for _ in range(30):
        flipped = bytearray(payload)
        for _ in range(3):
            flipped[rng.integers(len(flipped))] ^= 1 << rng.integers(8)
        _outcome(tmp_path, _seal(header, bytes(flipped)))


def test_a_damaged_version_field_reads_as_damage(smask, tmp_path):
    data = bytearray(smask.read_bytes())
    data[10] ^= 0xFF  # inside the u32 version
    (tmp_path / "x.smask").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="corrupt: its checksum does not match"):
        load(tmp_path / "x.smask")


def test_exporting_a_run_that_keeps_every_weight(tmp_path, capsys):
    from supermask.cli import main

    run = _fake_run(tmp_path / "run", prune_rate=0.0)
    assert main(["export", str(run), "-o", str(tmp_path / "x.smask")]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "every weight kept" in out
    assert all(e["kept"] == np.prod(e["shape"]) for e in read(tmp_path / "x.smask")[0]["layers"])
    load(tmp_path / "x.smask")


def test_a_compact_head_is_written_by_hand_and_refused_when_damaged():
    # gaps 2 and 0 with b=1 in 6 bits: count 2 (varint 0x02), b << 1 | minority = 0b11, one quotient-stream byte
    # (unary "10" then "0": 0b10000000), then the remainders "0", "0" (0b00000000)
    blob = bytes([0x02, 0b11, 0x01, 0b10000000, 0b00000000])
    assert codec.decode(blob, 6).tolist() == [False, False, True, True, False, False]
    # the encoder picks b=0 here (2 + 0 quotient bits and 2 stops, against 2 + 2 for b=1): unary "110" "0"
    best = bytes([0x02, 0b01, 0x01, 0b11000000])
    assert codec.encode(np.array([False, False, True, True, False, False])) == best
    assert codec.decode(best, 6).tolist() == [False, False, True, True, False, False]
    assert codec.head_bytes(blob, 6) == 3 == codec.head_bytes(best, 6)
    for bad in (blob[:2],                          # truncated head
                bytes([0x82, 0x00]) + blob[1:],    # count 2 in a longer form than it needs: two readings
                bytes([0x07]) + blob[1:],          # 7 minority bits in 6
                blob + b"\0"):                      # trailing byte
        with pytest.raises(ConfigError):
            codec.decode(bad, 6)


def test_random_compact_blobs_decode_consistently_or_are_refused():
    rng = np.random.default_rng(1)
    masks = [rng.random(n) < k for n, k in [(50, 0.2), (300, 0.5), (1000, 0.95)]]
    for _ in range(600):
        mask = masks[rng.integers(len(masks))]
        blob = bytearray(codec.encode(mask))
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(len(blob))
            blob[i] ^= 1 << rng.integers(8)
        try:
            bits = codec.decode(bytes(blob), mask.size)
        except ConfigError:
            continue
        assert bits.size == mask.size
