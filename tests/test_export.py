"""The .smask format: exact rebuild, size near the entropy bound, and clean rejection of damaged files."""

import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from supermask import ConfigError
from supermask.cli import main
from supermask.run.config import make_config
from supermask.export.smask import MAGIC, export_run, load, metadata_strings, read
from supermask.export.smask import evaluate_smask
from supermask.run.train import evaluate_run, load_run_model, run

BASE = {"model": "small-conv", "dataset": "digits", "width": 0.25, "epochs": 2, "batch_size": 128}
VARIANTS = {
    "edge-popup": {"method": "edge-popup", "prune_rate": 0.9},
    "edge-popup+iwr": {"method": "edge-popup", "prune_rate": 0.5, "iwr_every": 1, "iwr_rate": 0.5, "epochs": 4},
    "biprop+iwr": {"method": "biprop", "prune_rate": 0.5, "iwr_every": 1, "iwr_rate": 0.5, "epochs": 4},
    "iterand": {"method": "edge-popup", "prune_rate": 0.5, "iterand_every_steps": 3, "iterand_rate": 0.5},
    "skip-first": {"method": "biprop", "prune_rate": 0.5, "skip_layers": ["first"], "channels_last": False},
    # the published builders' fan (fan_in * p) and the ablation gradient: the file rebuilds the weights it used
    "published-fan": {"method": "biprop", "prune_rate": 0.9, "scale_fan_by": "pruned", "biprop_grad": "alpha"},
    # the published code's float count of what a layer prunes (its 640-weight head prunes 127 of 640 at 20%) and
    # alpha's published denominator: the file records the count rule and checks each layer's kept count by it
    "published-count": {"method": "biprop", "prune_rate": 0.2, "pruned_count": "published",
                        "biprop_alpha_count": "published"},
    # IteRand's published code: signed-score masks of its percentile count, its score init, its redraw timing, and
    # its held-out training images
    "iterand-published": {"method": "edge-popup", "prune_rate": 0.5, "score_rank": "signed",
                          "score_init": "kaiming-uniform", "pruned_count": "percentile", "iterand_every_steps": 3,
                          "iterand_timing": "before", "holdout": 100},
    # every masked weight from 100 random values: the file stores N, and rebuilds the weights from it
    "shared-source": {"method": "edge-popup", "prune_rate": 0.5, "weight_source": "shared:100"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, o in VARIANTS.items():
        cfg = make_config(None, {**BASE, **o, "out_dir": str(root / name)})
        run(cfg, progress=False)
        out[name] = root / name
    return out


def _trained_outputs(run_dir, x):
    """The run's model as it ran (its device and memory layout) on x."""
    _, _, model, _ = load_run_model(run_dir, device="cpu")
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_rebuild_is_exact(runs, tmp_path, name):
    report = export_run(runs[name], tmp_path / "net.smask")
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rebuilt = load(tmp_path / "net.smask")
    assert not any("parametrizations" in k for k in rebuilt.state_dict())  # an ordinary module
    with torch.no_grad():  # equal to the last bit in the run's layout (channels-last except skip-first's run)
        for batch in (x, x.contiguous(memory_format=torch.channels_last)):
            assert torch.equal(rebuilt(batch), _trained_outputs(runs[name], batch))
    assert report["bytes"] < report["dense_float32_bytes"] / 8
    header, _ = read(tmp_path / "net.smask")
    if name in ("edge-popup+iwr", "biprop+iwr", "iterand"):
        assert any("changed" in e for e in header["layers"])  # what the seed no longer gives back is stored
    assert header.get("scale_fan_by") == ("pruned" if name == "published-fan" else None)  # written only when not the default
    assert header.get("weight_source") == ("shared:100" if name == "shared-source" else None)
    assert header.get("pruned_count") == {"published-count": "published", "iterand-published": "percentile"}.get(name)
    if name == "edge-popup":
        assert not any("changed" in e for e in header["layers"])
        # plain EP: masks within 1.1x their entropy bound, plus a fixed header of a few hundred bytes per file
        assert report["bytes"] <= 1.1 * report["entropy_bytes"] + 1200


def test_eval_of_the_file_matches_the_run_and_plain_exports(runs, tmp_path, capsys):
    path = tmp_path / "net.smask"
    assert main(["export", str(runs["biprop+iwr"]), "-o", str(path), "--safetensors", str(tmp_path / "w.safetensors")]) == 0
    capsys.readouterr()
    assert main(["eval", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((runs["biprop+iwr"] / "summary.json").read_text())
    assert result["test_acc"] == summary["test_acc"] == result["recorded_test_acc"]
    from safetensors.torch import load_file

    plain = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(plain["0.weight"], load(path).state_dict()["0.weight"])


def test_the_header_and_the_plain_exports_record_how_inputs_are_prepared(runs, tmp_path):
    from safetensors import safe_open

    from supermask.data import load_dataset

    path, weights = tmp_path / "net.smask", tmp_path / "w.safetensors"
    assert main(["export", str(runs["edge-popup"]), "-o", str(path), "--safetensors", str(weights)]) == 0
    header, _ = read(path)
    pixels = load_dataset("digits").train_x.double() / 255  # the run's statistics: those of its training images
    assert header["version"] == 2 and "amp" not in header
    assert header["preprocessing"] == {
        "input": "images", "channel_order": "L", "image_size": 8, "resize": "whole", "scale": 1 / 255,
        "mean": [pytest.approx(pixels.mean().item(), rel=1e-12)],
        "std": [pytest.approx(pixels.std(correction=0).item(), rel=1e-12)],
        "classes": [str(d) for d in range(10)]}
    with safe_open(str(weights), "pt") as f:
        stored = f.metadata()
    assert stored == metadata_strings(header)
    assert (stored["channel_order"], json.loads(stored["scale"]), json.loads(stored["classes"])[3]) == ("L", 1 / 255, "3")


def _digit_files(folder, count):
    """The first `count` digits test images as PNG files, and the network's input for them as the run read them."""
    from PIL import Image

    from supermask.data import load_dataset, normalize

    ds = load_dataset("digits")
    files = []
    for i in range(count):
        files.append(folder / f"{i}.png")
        Image.fromarray(ds.test_x[i, 0].numpy()).save(files[-1])
    return files, normalize(ds.test_x[:count], ds.mean, ds.std)


def test_predict_prepares_images_as_the_run_read_them(runs, tmp_path, capsys):
    path = tmp_path / "net.smask"
    export_run(runs["biprop+iwr"], path)
    files, x = _digit_files(tmp_path, 4)
    with torch.no_grad():
        best = torch.softmax(load(path)(x), dim=1).topk(2, dim=1)
    capsys.readouterr()
    assert main(["predict", str(path), *map(str, files), "--top", "2"]) == 0
    expected = [f"{f}: {int(i[0])} {100 * p[0]:.1f}%, {int(i[1])} {100 * p[1]:.1f}%"
                for f, p, i in zip(files, best.values.tolist(), best.indices.tolist())]
    assert capsys.readouterr().out.splitlines() == expected
    from PIL import Image  # a picture of another size and mode is converted and resized, not refused

    Image.open(files[0]).convert("RGB").resize((24, 24)).save(tmp_path / "big.jpg")
    assert main(["predict", str(path), str(tmp_path / "big.jpg"), "--top", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'big.jpg'}: ")
    for bad in (["predict", str(path), str(tmp_path / "missing.png")], ["predict", str(path), str(path)]):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("supermask: error: cannot read image")


def test_a_version_1_file_still_loads_and_predict_asks_for_a_new_export(tmp_path, capsys):
    # a file written by main at 0013fc2 (tests/test_old_runs.py: it loads, evaluates and equals a new export)
    old = Path(__file__).parent / "fixtures" / "main-0013fc2" / "ep.smask"
    assert read(old)[0]["version"] == 1 and "preprocessing" not in read(old)[0]
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert load(old)(x).shape == (16, 10)
    files, _ = _digit_files(tmp_path, 1)
    capsys.readouterr()
    assert main(["predict", str(old), str(files[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export its run again" in err[0]


def test_an_amp_runs_file_evaluates_as_the_run(tmp_path):
    run(make_config(None, {**BASE, "method": "biprop", "prune_rate": 0.5, "epochs": 1, "amp": True,
                           "out_dir": str(tmp_path / "run")}), progress=False)
    export_run(tmp_path / "run", tmp_path / "net.smask")
    of_run, of_file = evaluate_run(tmp_path / "run", device="cpu"), evaluate_smask(tmp_path / "net.smask", device="cpu")
    assert (of_file["test_loss"], of_file["test_acc"]) == (of_run["test_loss"], of_run["test_acc"])
    assert read(tmp_path / "net.smask")[0]["amp"] is True


ONNX_RUNS = {  # one per kind of input, each a second or two of training
    "small-conv": {**BASE, "method": "edge-popup", "prune_rate": 0.5, "epochs": 1},
    "vit": {"model": "vit", "dataset": "digits", "width": 0.125, "method": "biprop", "prune_rate": 0.5, "epochs": 1},
    "text-transformer": {"model": "text-transformer", "dataset": "listops", "width": 0.25, "method": "edge-popup",
                         "prune_rate": 0.5, "epochs": 1, "augment": False, "batch_size": 64},
}


def _onnx_outputs(path, name, x):
    """The ONNX file's outputs on x: onnxruntime where installed, else onnx's own reference evaluator."""
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(str(path)).run(None, {name: x.numpy()})[0]
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x.numpy()})[0]


@pytest.mark.parametrize("model", list(ONNX_RUNS))
def test_onnx_export_takes_each_models_input(tmp_path, monkeypatch, capsys, model):
    onnx = pytest.importorskip("onnx")
    from supermask import data as data_lib
    from supermask import train as train_lib

    load_dataset = data_lib.load_dataset

    def small(*args, **kwargs):  # a few batches: what is tested is the export, not the search
        ds = load_dataset(*args, **kwargs)
        return dataclasses.replace(ds, train_x=ds.train_x[:256], train_y=ds.train_y[:256], test_x=ds.test_x[:64],
                                   test_y=ds.test_y[:64])

    monkeypatch.setattr(train_lib.data_lib, "load_dataset", small)
    run(make_config(None, {**ONNX_RUNS[model], "out_dir": str(tmp_path / "run")}), progress=False)
    smask, onnx_file = tmp_path / "net.smask", tmp_path / "net.onnx"
    assert main(["export", str(tmp_path / "run"), "-o", str(smask), "--onnx", str(onnx_file)]) == 0
    assert f"ONNX model written to {onnx_file}" in capsys.readouterr().out
    graph = onnx.load(str(onnx_file))
    onnx.checker.check_model(graph)
    (given,), (logits,) = graph.graph.input, graph.graph.output
    dims = [d.dim_param or d.dim_value for d in given.type.tensor_type.shape.dim]
    gen = torch.Generator().manual_seed(0)
    if model == "text-transformer":  # int64 token ids (batch, length), 0 the padding
        assert (given.name, given.type.tensor_type.elem_type, dims) == ("tokens", onnx.TensorProto.INT64, ["batch", 64])
        x = load_dataset("listops").test_x[:5]
        assert (x == 0).any() and (x != 0).all(1).sum() < 5  # padded sequences of different lengths
    else:  # float images (batch, channels, side, side)
        assert (given.name, given.type.tensor_type.elem_type, dims) == ("images", onnx.TensorProto.FLOAT,
                                                                        ["batch", 1, 8, 8])
        x = torch.randn(5, 1, 8, 8, generator=gen)
    assert logits.name == "logits"
    # the preprocessing travels with the network
    assert {p.key: p.value for p in graph.metadata_props} == metadata_strings(read(smask)[0])
    assert graph.metadata_props[0].value == ("tokens" if model == "text-transformer" else "images")
    with torch.no_grad():
        expected = load(smask)(x).numpy()
    got = _onnx_outputs(onnx_file, given.name, x)  # a batch of 5, though the export traced a batch of 2
    assert got.shape == expected.shape == (5, 10)
    assert abs(got - expected).max() <= 1e-4 * max(1.0, abs(expected).max())


def test_dense_runs_cannot_be_exported(tmp_path):
    run(make_config(None, {**BASE, "method": "dense", "epochs": 1, "out_dir": str(tmp_path / "d")}), progress=False)
    with pytest.raises(ConfigError, match="dense"):
        export_run(tmp_path / "d", tmp_path / "d.smask")


def _resealed(data: bytes, header: dict) -> bytes:
    """The file with `header` in place of its own and a valid checksum: tests validation past the checksum."""
    _, version, head_len = struct.unpack_from("<8sII", data)
    payload = data[16 + head_len:-32]
    head = json.dumps(header).encode()
    body = struct.pack("<8sII", MAGIC, version, len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def test_damaged_files_are_rejected_cleanly(runs, tmp_path):
    good = tmp_path / "good.smask"
    export_run(runs["biprop+iwr"], good)
    data = good.read_bytes()
    header, _ = read(good)
    rng = random.Random(0)
    variants = [data[:n] for n in [0, 5, 15, 16, 100, len(data) // 2, len(data) - 33, len(data) - 1]]
    for _ in range(40):
        flipped = bytearray(data)
        i = rng.randrange(len(data))
        flipped[i] ^= 1 << rng.randrange(8)
        variants.append(bytes(flipped))
    variants.append(b"NOTSMASK" + data[8:])
    variants.append(data[:8] + struct.pack("<I", 99) + data[12:])  # another version
    edits = [
        lambda h: h.update(model="conv2"),  # wrong architecture
        lambda h: h.update(model="nope"),
        lambda h: h.update(width=1.0),  # same model, other shapes
        lambda h: h.update(width=5000.0),  # would be billions of parameters: refused before allocating
        lambda h: h.update(num_classes=10**12),
        lambda h: h.update(prune_rate=1.5),
        lambda h: h["layers"].pop(),
        lambda h: h["layers"][0].update(mask=[0, 10**12]),
        lambda h: h["layers"][0].update(mask=[3, 5]),
        lambda h: h["layers"][0].update(shape=[1, 1, 1, 1]),
        lambda h: h["layers"][1].update(alpha=0.5),
        lambda h: h["tensors"].append({"key": "x", "shape": [10**9], "dtype": "float32", "data": [0, 4]}),
        lambda h: h.update(payload_length=1),
        lambda h: h.pop("preprocessing"),  # required from version 2
        lambda h: h["preprocessing"].update(mean=[0.1, 0.2, 0.3]),
        lambda h: h["preprocessing"].update(std=[0.0]),
        lambda h: h["preprocessing"].update(classes=["a"]),
        lambda h: h["preprocessing"].update(channel_order="RGB"),
        lambda h: h["preprocessing"].update(image_size=32),
        lambda h: h["preprocessing"].update(resize="center-crop"),
        lambda h: h["preprocessing"].update(input="tokens"),
        lambda h: h["preprocessing"].pop("scale"),
        lambda h: h.clear(),
    ]
    for edit in edits:
        h = json.loads(json.dumps(header))
        edit(h)
        variants.append(_resealed(data, h))
    # a mask blob whose own head claims more minority bits than its layer has weights (its count is the head's
    # first byte, a one-byte varint here), sealed with a valid checksum
    start = 16 + struct.unpack_from("<I", data, 12)[0] + header["layers"][0]["mask"][0]
    patched = bytearray(data[:-32])
    assert patched[start] < 0x80
    patched[start] = 0x7F  # 127 of a layer's 144 weights at 90% pruned: not what its codes hold
    variants.append(bytes(patched) + hashlib.sha256(patched).digest())
    for i, variant in enumerate(variants):
        path = tmp_path / f"bad{i}.smask"
        path.write_bytes(variant)
        with pytest.raises(ConfigError):  # refused from the header, before any claimed size is allocated
            load(path)


def test_damaged_file_on_the_command_line(runs, tmp_path, capsys):
    path = tmp_path / "net.smask"
    export_run(runs["edge-popup"], path)
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0]


def _progress(run_dir):
    """The run's last checkpoint as (modification time, size), or None before the first."""
    ckpt = run_dir / "checkpoint.safetensors"
    try:
        stat = ckpt.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def test_sigkill_at_random_moments_then_resume_gives_the_same_run(tmp_path):
    args = ["train", "digits", "model=small-conv", "width=0.25", "epochs=4", "batch_size=64", "-q"]
    ref = tmp_path / "ref"
    assert main(args + [f"out_dir={ref}"]) == 0
    rng = random.Random(1)
    target = tmp_path / "killed"
    command = [sys.executable, "-m", "supermask", *args, f"out_dir={target}", "--resume"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(3):
        before = _progress(target)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill only once this start has trained (a new checkpoint), then at a random moment of the next epoch.
        while _progress(target) == before and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    assert (ref / "masks.safetensors").read_bytes() == (target / "masks.safetensors").read_bytes()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, target))
    assert a["test_acc"] == b["test_acc"]
    assert not [p.name for p in target.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("outputs", [
    ["-o", "{tmp}"],                                            # an existing directory
    ["-o", "{tmp}/missing/x.smask"],                            # a folder that does not exist
    ["-o", "{tmp}/x.smask", "--onnx", "/nonexistent_dir/x.onnx"],
    ["-o", "{tmp}/x.smask", "--safetensors", "{tmp}/missing/w.safetensors"],
])
def test_unwritable_outputs_are_one_line_errors(runs, tmp_path, capsys, outputs):
    argv = ["export", str(runs["edge-popup"])] + [a.format(tmp=tmp_path) for a in outputs]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("supermask: error:")
    assert not (tmp_path / "x.smask").exists()  # refused before any work


@pytest.mark.parametrize("content", ["{", "[1, 2]", "\xff"])
def test_a_corrupt_summary_is_a_one_line_error(runs, tmp_path, capsys, content):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["edge-popup"], run_dir)
    (run_dir / "summary.json").write_bytes(content.encode("latin-1"))
    assert main(["export", str(run_dir), "-o", str(tmp_path / "x.smask")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "summary.json is corrupt" in err[0]


def test_a_mismatched_init_from_names_what_differs(tmp_path):
    from supermask.run.checkpoint import save_checkpoint
    from supermask.data import load_dataset
    from supermask.run.train import build, make_optimizer, new_state

    dense = make_config(None, {**BASE, "method": "dense"})
    model = build(dense, load_dataset("digits"))
    (tmp_path / "dense").mkdir()
    save_checkpoint(tmp_path / "dense" / "checkpoint.safetensors", model, make_optimizer(dense, model), new_state())
    cfg = make_config(None, {**BASE, "width": 0.5, "init_from": str(tmp_path / "dense"), "weight_init": "keep"})
    with pytest.raises(ConfigError, match=r"4 of another shape \(0.weight \[16, 1, 3, 3\] in the file, \[32, 1, 3, 3\]"):
        build(cfg, load_dataset("digits"))


def test_a_run_on_a_relative_folder_evaluates_from_anywhere(tmp_path, monkeypatch, capsys):
    from PIL import Image

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    rng = random.Random(0)
    for split, n in (("train", 12), ("test", 6)):
        for cls in ("a", "b"):
            (work / "imgs" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (8, 8), rng.randrange(256)).save(work / "imgs" / split / cls / f"{i}.png")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "digits", "model=small-conv", "width=0.25", "epochs=1", "dataset=imgs", "out_dir=run",
                 "-q"]) == 0
    assert main(["export", "run", "-o", "net.smask"]) == 0
    summary = json.loads((work / "run" / "summary.json").read_text())
    # results name the data and its checksum, not this machine's path; the config keeps the path for re-runs
    assert (summary["dataset"], summary["dataset_source"], len(summary["dataset_sha256"])) == ("imgs", "imgs", 64)
    assert str(tmp_path) not in (work / "run" / "summary.json").read_text()
    assert make_config(str(work / "run" / "config.yaml")).dataset == str(work / "imgs")
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    for target in (work / "run", work / "net.smask"):
        assert main(["eval", str(target)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["test_acc"] == summary["test_acc"] and result["same_data_as_run"] is True
    (work / "imgs").rename(work / "moved")  # the data moved (or another machine): eval is told where it is
    assert main(["eval", str(work / "run")]) == 2
    capsys.readouterr()
    for target in (work / "run", work / "net.smask"):
        assert main(["eval", str(target), f"dataset={work / 'moved'}"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["test_acc"] == summary["test_acc"] and result["same_data_as_run"] is True
    assert main(["eval", str(work / "run"), "lr=0.1"]) == 2


def test_the_export_report_separates_the_codes_from_the_per_layer_heads(tmp_path, capsys):
    # small-conv at width 0.25 has 4 masked layers of 144, 2,304, 16,384 and 640 weights: at 50% pruned each
    # costs n * H(0.5) = n bits of entropy; the version-1 26-byte head was 18% of the 144-weight layer's bound, the
    # compact head (version 2) is 3 to 5 bytes.
    from supermask.export import codec

    run_dir = tmp_path / "run"
    run(make_config(None, {**BASE, "epochs": 1, "prune_rate": 0.5, "out_dir": str(run_dir)}), progress=False)
    report = export_run(run_dir, tmp_path / "net.smask")
    entropy = (144 + 2304 + 16384 + 640) / 8
    assert report["entropy_bytes"] == entropy and report["mask_layers"] == 4
    heads = report["mask_head_bytes"]  # compact heads: count and stream length as varints, b and the minority bit
    assert 4 * 3 <= heads <= 4 * 5 and heads < 4 * codec.HEAD_BYTES  # the version-1 head was 26 bytes
    codes = report["mask_bytes"] - heads
    assert report["codes_vs_entropy"] == round(codes / entropy, 4) and codes / entropy < 1.015
    assert report["mask_vs_entropy"] == round((codes + heads) / entropy, 4) and report["mask_vs_entropy"] < 1.02
    assert main(["export", str(run_dir), "-o", str(tmp_path / "again.smask")]) == 0
    assert (f"{report['mask_vs_entropy']}x their entropy bound of 2,434 bytes (the codes "
            f"{report['codes_vs_entropy']:.4f}x, plus {heads} bytes of heads over 4 layers)") in capsys.readouterr().out


def test_the_published_count_prunes_by_the_published_float_arithmetic(runs):
    from supermask import masks

    _, _, model, _ = load_run_model(runs["published-count"], device="cpu")
    counts = [(int(m.sum()), m.numel()) for m in masks(model).values()]
    for kept, n in counts:
        assert n - kept == int(0.19999999999999996 * n)  # the published int((1 - 0.8) n)
    # a layer whose fifth is whole prunes one fewer than floor(0.2 n): the 640-weight head prunes 127
    assert any(n % 5 == 0 and n - kept == n // 5 - 1 for kept, n in counts)
    for change, match in (({"pruned_count": "float"}, "pruned_count 'float'"),
                          ({"pruned_count": "published", "prune_scope": "global"}, "prune_scope=global"),
                          ({"pruned_count": "published", "method": "gem-miner"}, "method=gem-miner"),
                          ({"score_rank": "signed", "method": "biprop"}, "not method=biprop's"),
                          ({"score_rank": "signed", "prune_scope": "global"}, "IWR rank |scores|"),
                          ({"score_rank": "signed", "method": "edge-popup+iwr"}, "IWR rank |scores|"),
                          ({"score_init": "kaiming-uniform", "method": "gem-miner"}, "draws its own")):
        with pytest.raises(ConfigError, match=match):
            make_config(None, {**BASE, **change})


def test_iterands_published_masks_keep_the_largest_signed_scores_of_the_percentile_count(runs):
    from supermask import masks, score_parameters
    from supermask.core.mask import num_pruned

    _, _, model, _ = load_run_model(runs["iterand-published"], device="cpu")
    for (name, mask), scores in zip(masks(model).items(), score_parameters(model)):
        n = mask.numel()
        assert int((~mask).sum()) == round(0.01 * 50.0 * (n - 1)) == num_pruned(n, 0.5, "percentile")
        assert scores.detach()[mask].min() >= scores.detach()[~mask].max()  # signed scores, not |scores|
    summary = json.loads((runs["iterand-published"] / "summary.json").read_text())
    assert summary["holdout_images"] == 100 and summary["iterand_steps"] > 0
