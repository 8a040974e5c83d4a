"""Tests for supermask.data.stream: indexing image folders (ImageNet's layouts too) without decoding, lazy decoding
with skips of bad files, and the epoch order and its partition among processes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supermask.data import stream as S
from supermask.data.transforms import eval_transform, sample_rng, train_transform
from supermask.errors import ConfigError


def _write_jpeg(path: Path, seed: int) -> None:
    """A small JPEG of its own size (20-60 pixels a side) and colour."""
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(20, 61, 2))
    a = np.clip(rng.normal(rng.integers(30, 220, 3), 20, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, "JPEG")


def _tree(root: Path, classes=("n02", "n01", "n03"), per_class: int = 3, val: str = "folders") -> Path:
    """train/<class>/<class>_<i>.JPEG and val/ in class folders ("folders") or flat ("flat", without labels)."""
    seed = itertools.count()
    for c in classes:
        for i in range(per_class):
            _write_jpeg(root / "train" / c / f"{c}_{i}.JPEG", next(seed))
            if val == "folders":
                _write_jpeg(root / "val" / c / f"v_{c}_{i}.JPEG", next(seed))
            else:
                _write_jpeg(root / "val" / f"ILSVRC_val_{c}_{i}.JPEG", next(seed))
    return root


def _names(images: S.ImageList) -> list[str]:
    return [f.decode() for f in images.files]


# --------------------------------------------------------------------------------------------- #
# Index


def test_index_of_class_folders(tmp_path: Path):
    root = _tree(tmp_path)
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    (root / "train" / "n01" / ".hidden.JPEG").write_bytes(b"")
    (root / "train" / ".cache").mkdir()
    idx = S.index_image_folder(root)
    assert idx.classes == ("n01", "n02", "n03")
    assert _names(idx.train)[:4] == ["train/n01/n01_0.JPEG", "train/n01/n01_1.JPEG", "train/n01/n01_2.JPEG",
                                     "train/n02/n02_0.JPEG"]
    assert idx.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert _names(idx.test)[3] == "val/n02/v_n02_0.JPEG" and idx.test.labels.tolist() == idx.train.labels.tolist()
    assert idx.train.path(0) == root / "train/n01/n01_0.JPEG"


def test_eval_falls_back_to_test_and_may_miss_classes(tmp_path: Path):
    root = _tree(tmp_path)
    (root / "val").rename(root / "test")
    for f in (root / "test" / "n02").iterdir():
        f.unlink()
    (root / "test" / "n02").rmdir()
    idx = S.index_image_folder(root)
    assert idx.test.labels.tolist() == [0, 0, 0, 2, 2, 2]  # n03 keeps label 2: the classes come from train/


def test_flat_val_with_kaggle_csv_beside_it(tmp_path: Path):
    root = _tree(tmp_path, val="flat")
    rows = [f"ILSVRC_val_{c}_{i},{c} 12 30 200 180 {c} 1 2 3 4" for c in ("n03", "n01", "n02") for i in range(3)]
    rows.append("ILSVRC_val_absent,n01 1 2 3 4")  # an image not in this subset: ignored
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    idx = S.index_image_folder(root)
    assert _names(idx.test)[0] == "val/ILSVRC_val_n01_0.JPEG"
    assert idx.test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_flat_val_with_text_labels_names_or_indices(tmp_path: Path):
    root = _tree(tmp_path, val="flat")
    lines = [f"ILSVRC_val_n01_{i}.JPEG n01" for i in range(3)] + [f"ILSVRC_val_n02_{i}.JPEG 1" for i in range(3)]
    lines += [f"ILSVRC_val_n03_{i} 2" for i in range(3)]  # without the extension
    (root / "val" / "labels.txt").write_text("\n".join(lines) + "\n")
    assert S.index_image_folder(root).test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ("ILSVRC_val_n01_0.JPEG n09\n", r"labels.txt:1: label 'n09' is neither a class folder of train/ nor an index"),
        ("ILSVRC_val_n01_0.JPEG 3\n", r"labels.txt:1: label '3' is neither"),
        ("ILSVRC_val_n01_0.JPEG\n", r"labels.txt:1: expected file label"),
        ("ILSVRC_val_n01_0.JPEG n01\n", r"val/ILSVRC_val_n01_1.JPEG: no label in .*labels.txt \(8 images have none\)"),
    ],
)
def test_bad_labels_file_is_named(tmp_path: Path, labels: str, match: str):
    root = _tree(tmp_path, val="flat")
    (root / "val" / "labels.txt").write_text(labels)
    with pytest.raises(ConfigError, match=match):
        S.index_image_folder(root)


def test_layout_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(ConfigError, match="no train/ folder"):
        S.index_image_folder(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match="no class folders"):
        S.index_image_folder(tmp_path)
    root = _tree(tmp_path / "a")
    (root / "train" / "n04").mkdir()
    (root / "train" / "n04" / "readme.md").write_text("x")
    with pytest.raises(ConfigError, match=r"a/train/n04: empty class folder"):
        S.index_image_folder(root)
    root = _tree(tmp_path / "b")
    _write_jpeg(root / "val" / "n09" / "x.JPEG", 0)
    with pytest.raises(ConfigError, match=r"b/val/n09: not a class of train/"):
        S.index_image_folder(root)
    root = _tree(tmp_path / "c", val="flat")
    with pytest.raises(ConfigError, match="need a labels file"):
        S.index_image_folder(root)
    root = _tree(tmp_path / "d")
    for p in sorted((root / "val").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (root / "val").rmdir()
    with pytest.raises(ConfigError, match="no val/ or test/ folder"):
        S.index_image_folder(root)


# --------------------------------------------------------------------------------------------- #
# Decoding


def test_items_are_the_transforms_of_their_file(tmp_path: Path):
    idx = S.index_image_folder(_tree(tmp_path))
    train = S.ImageStream(idx.train, 16, augment=True, seed=5)
    x, y = train[(2, 4)]
    with Image.open(idx.train.path(4)) as img:
        want = train_transform(img, 16, sample_rng(5, 2, 4))
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and torch.equal(x, want) and y == 1
    assert not torch.equal(train[(3, 4)][0], x)  # another epoch, another crop
    test = S.ImageStream(idx.test, 16, augment=False)
    with Image.open(idx.test.path(7)) as img:
        assert torch.equal(test[(0, 7)][0], eval_transform(img, 16))
    assert torch.equal(test[(0, 7)][0], test[(9, 7)][0])


def test_bad_image_is_named_or_skipped_to_the_next(tmp_path: Path, capfd: pytest.CaptureFixture):
    idx = S.index_image_folder(_tree(tmp_path))
    bad = idx.train.path(4)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(ConfigError, match=rf"{bad}: cannot read image"):
        S.ImageStream(idx.train, 16, augment=True, skip_bad=False)[(0, 4)]
    stream = S.ImageStream(idx.train, 16, augment=True, seed=1)
    x, y = stream[(0, 4)]
    with Image.open(idx.train.path(5)) as img:
        assert torch.equal(x, train_transform(img, 16, sample_rng(1, 0, 4)))  # file 5, sample 4's augmentation
    assert y == int(idx.train.labels[5])
    stream[(1, 4)]
    err = capfd.readouterr().err
    assert err.count("skipping unreadable image") == 1 and str(bad) in err


def test_many_bad_images_in_a_row_raise_instead_of_looping(tmp_path: Path):
    idx = S.index_image_folder(_tree(tmp_path))
    for i in range(len(idx.train)):
        idx.train.path(i).write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match=r"and the 8 images after it cannot be read"):
        S.ImageStream(idx.train, 8, augment=True)[(0, 3)]


# --------------------------------------------------------------------------------------------- #
# Order and partition


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 4, 1), (10, 4, 2), (10, 4, 3), (11, 3, 4), (5, 4, 4)])
def test_ranks_see_every_sample_once_in_the_single_process_batches(n, batch, world):
    single = [b.tolist() for b in S.train_batch_indices(n, batch, seed=7, epoch=1)]
    assert sorted(itertools.chain(*single)) == list(range(n))
    assert [len(b) for b in single] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    parts = [list(S.train_batch_indices(n, batch, seed=7, epoch=1, rank=r, world=world)) for r in range(world)]
    assert all(len(p) == len(single) for p in parts)  # every process steps together, even on an empty part
    for b, whole in enumerate(single):
        assert list(itertools.chain(*(p[b].tolist() for p in parts))) == whole
        sizes = [len(p[b]) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_order_depends_only_on_seed_and_epoch():
    a = [b.tolist() for b in S.train_batch_indices(50, 8, seed=3, epoch=2)]
    assert a == [b.tolist() for b in S.train_batch_indices(50, 8, seed=3, epoch=2)]
    assert a != [b.tolist() for b in S.train_batch_indices(50, 8, seed=3, epoch=3)]
    assert a != [b.tolist() for b in S.train_batch_indices(50, 8, seed=4, epoch=2)]


def test_start_batch_skips_the_batches_already_seen_and_drop_last_only_the_short_one():
    full = [b.tolist() for b in S.train_batch_indices(23, 5, seed=0, epoch=0, rank=1, world=2)]
    resumed = [b.tolist() for b in S.train_batch_indices(23, 5, seed=0, epoch=0, rank=1, world=2, start_batch=3)]
    assert resumed == full[3:]
    dropped = [b.tolist() for b in S.train_batch_indices(23, 5, seed=0, epoch=0, rank=1, world=2, drop_last=True)]
    assert dropped == full[:4]


def test_eval_parts_are_contiguous_and_cover_the_split():
    parts = [[b.tolist() for b in S.eval_batch_indices(11, 2, rank=r, world=3)] for r in range(3)]
    assert parts == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [10]]]


def test_bad_partition_arguments_are_refused():
    with pytest.raises(ConfigError, match="rank"):
        next(S.train_batch_indices(10, 2, seed=0, epoch=0, rank=2, world=2))
    with pytest.raises(ConfigError, match="batch_size"):
        next(S.train_batch_indices(10, 0, seed=0, epoch=0))
    with pytest.raises(ConfigError, match="start_batch"):
        next(S.train_batch_indices(10, 2, seed=0, epoch=0, start_batch=-1))


def test_loader_batches_match_across_worker_counts_and_resume(tmp_path: Path):
    idx = S.index_image_folder(_tree(tmp_path))
    stream = S.ImageStream(idx.train, 12, augment=True, seed=2)

    def batches(**kw):
        loader = S.stream_loader(stream, 4, shuffle=True, epoch=1, **kw)
        out = list(loader)
        assert len(out) == len(loader)
        return out

    inline = batches()
    assert [len(y) for _, y in inline] == [4, 4, 1]
    workers = batches(num_workers=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(inline, workers, strict=True))
    resumed = batches(start_batch=2)
    assert len(resumed) == 1 and torch.equal(resumed[0][0], inline[2][0])
    # 9 images in batches of 4 on 4 processes: the last batch has 1 image, so processes 1-3 get an empty part.
    empty = list(S.stream_loader(stream, 4, shuffle=True, epoch=1, rank=3, world=4))
    assert empty[-1][0].shape == (0, 3, 12, 12) and empty[-1][1].shape == (0,)
    test = S.ImageStream(idx.test, 12, augment=False)
    assert [len(y) for _, y in S.stream_loader(test, 4, shuffle=False, rank=1, world=2)] == [4]  # images 5-8


# --------------------------------------------------------------------------------------------- #
# Wired into load_dataset, the batch iterators and runs


def _same_size_tree(root: Path) -> Path:
    """train/ and test/ of 12x12 PNGs: a set the in-memory loader reads."""
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(2):
                p = root / split / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), (40 * i, 90, 200)).save(p)
    return root


def test_auto_streams_imagenet_layouts_and_mixed_sizes_only(tmp_path: Path):
    from supermask.data import Dataset, StreamDataset, load_dataset

    imagenet = load_dataset(str(_tree(tmp_path / "inet")), mode="auto", image_size=20, num_workers=0)
    assert isinstance(imagenet, StreamDataset) and imagenet.image_size == 20 and imagenet.num_classes == 3
    assert len(imagenet.train_y) == 9 and imagenet.in_channels == 3 and not imagenet.tokens
    small = _same_size_tree(tmp_path / "small")
    assert isinstance(load_dataset(str(small), mode="auto"), Dataset)
    assert isinstance(load_dataset(str(small), mode="stream", num_workers=0), StreamDataset)
    mixed = _tree(tmp_path / "mixed")
    (mixed / "val").rename(mixed / "test")
    assert isinstance(load_dataset(str(mixed), mode="auto", num_workers=0), StreamDataset)
    assert isinstance(load_dataset("digits", mode="auto"), Dataset)


def test_data_mode_errors(tmp_path: Path):
    from supermask.data import load_dataset

    with pytest.raises(ConfigError, match="unknown data_mode 'lazy'"):
        load_dataset("digits", mode="lazy")
    with pytest.raises(ConfigError, match="data_mode=stream reads image folders"):
        load_dataset("digits", mode="stream")
    with pytest.raises(ConfigError, match=r"image_size=32: digits is held in memory at its own size 8"):
        load_dataset("digits", image_size=32)
    small = _same_size_tree(tmp_path / "small")
    import tarfile

    with tarfile.open(tmp_path / "small.tar.gz", "w:gz") as tf:
        tf.add(small, arcname="small")
    with pytest.raises(ConfigError, match="is an archive: extract it first"):
        load_dataset(str(tmp_path / "small.tar.gz"), mode="stream")


def test_stream_batches_are_normalized_items_split_among_processes(tmp_path: Path):
    from supermask.data import eval_batches, load_dataset, normalize, train_batches

    ds = load_dataset(str(_tree(tmp_path)), mode="stream", image_size=12, num_workers=0)
    batches = list(train_batches(ds, 4, seed=3, epoch=1, augment=True))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 12, 12), (4, 3, 12, 12), (1, 3, 12, 12)]
    stream = S.ImageStream(ds.index.train, 12, augment=True, seed=3)
    first = next(S.train_batch_indices(9, 4, seed=3, epoch=1)).tolist()
    want = normalize(torch.stack([stream[(1, i)][0] for i in first]), ds.mean, ds.std)
    assert batches[0][0].dtype == torch.float32 and torch.equal(batches[0][0], want)
    assert batches[0][1].tolist() == [int(ds.index.train.labels[i]) for i in first]
    parts = [list(train_batches(ds, 4, seed=3, epoch=1, augment=True, shard=(r, 2))) for r in range(2)]
    for b, (x, y) in enumerate(batches):
        assert torch.equal(torch.cat([parts[0][b][0], parts[1][b][0]]), x)
        assert torch.equal(torch.cat([parts[0][b][1], parts[1][b][1]]), y)
    test = list(eval_batches(ds, 5))
    assert [len(y) for _, y in test] == [5, 4] and torch.cat([y for _, y in test]).tolist() == ds.test_y.tolist()


def test_an_error_in_a_worker_is_one_line(tmp_path: Path):
    from supermask.data import load_dataset, train_batches

    ds = load_dataset(str(_tree(tmp_path)), mode="stream", image_size=12, num_workers=1)
    for i in range(len(ds.index.train)):
        ds.index.train.path(i).write_bytes(b"garbage")
    with pytest.raises(ConfigError) as e:
        list(train_batches(ds, 4, seed=0, epoch=0, augment=True))
    assert "\n" not in str(e.value) and "cannot be read" in str(e.value) and str(tmp_path) in str(e.value)


def test_a_streamed_run_does_not_depend_on_the_worker_count(tmp_path: Path):
    from safetensors.torch import load_file

    from supermask.run.config import make_config
    from supermask.run.train import run

    root = _tree(tmp_path / "data", val="flat")
    labels = [f"ILSVRC_val_{c}_{i}.JPEG {c}\n" for c in ("n01", "n02", "n03") for i in range(3)]
    (root / "val.txt").write_text("".join(labels))
    summaries = []
    for workers in (0, 2):
        out = tmp_path / f"run{workers}"
        cfg = make_config("digits", {"dataset": str(root), "image_size": 12, "num_workers": workers, "epochs": 1,
                                     "batch_size": 4, "width": 0.5, "device": "cpu", "out_dir": str(out)})
        summaries.append(run(cfg, progress=False))
    a, b = (load_file(tmp_path / f"run{w}" / "masks.safetensors") for w in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summaries[0]["test_acc"] == summaries[1]["test_acc"] and summaries[0]["image_size"] == 12
    assert summaries[0]["dataset_sha256"] == summaries[1]["dataset_sha256"]
    cfg.num_workers = 1  # how many processes decode does not change the run: resuming with another count is fine
    assert run(cfg, resume=True, progress=False)["test_acc"] == summaries[1]["test_acc"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"data_mode": "lazy"}, "unknown data_mode 'lazy': expected one of memory, stream, auto"),
        ({"num_workers": -1}, r"num_workers=-1 must be an integer in \[0, "),
        ({"image_size": 0}, r"image_size=0 must be an integer in \[1, "),
        ({"image_size": 1.5}, r"image_size=1.5 must be an integer in \[1, "),
    ],
)
def test_config_keys_are_validated(overrides, match):
    from supermask.run.config import make_config

    with pytest.raises(ConfigError, match=match):
        make_config("digits", overrides)


def test_two_processes_stream_what_one_does_even_an_empty_part(tmp_path: Path):
    """torchrun (2 CPU processes, gloo): 9 images in batches of 4 leave process 1 an empty part of the last batch."""
    import subprocess
    import sys

    from supermask.run.checkpoint import load_tensors

    root = _tree(tmp_path / "data")
    args = ["-m", "supermask", "train", "digits", f"dataset={root}", "image_size=12", "num_workers=1", "epochs=1",
            "batch_size=4", "width=0.5", "device=cpu", "-q"]
    one = subprocess.run([sys.executable, *args, f"out_dir={tmp_path / 'one'}"], capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    two = subprocess.run([*torchrun, *args, f"out_dir={tmp_path / 'two'}"], capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    ta, _ = load_tensors(tmp_path / "one" / "checkpoint.safetensors")
    tb, _ = load_tensors(tmp_path / "two" / "checkpoint.safetensors")
    for key in ta:
        if key.endswith("scores"):  # the global batch's gradient, up to the order of float sums
            assert torch.allclose(ta[key], tb[key], atol=1e-5), key


def _invert_jpegs(folder: Path) -> None:
    """Every JPEG under `folder` replaced by its negative, under the same name."""
    from PIL import ImageOps

    for path in sorted(folder.rglob("*.JPEG")):
        with Image.open(path) as img:
            inverted = ImageOps.invert(img.convert("RGB"))
        inverted.save(path, "JPEG")


def test_eval_on_a_copy_whose_images_changed_is_not_the_same_data(tmp_path: Path, capsys):
    """The checksum of a streamed folder covers the bytes of its files: a copy whose every val/ image was inverted,
    under the same names, is not the run's data; an exact copy elsewhere is."""
    import json
    import shutil

    from supermask.cli import main

    root = _tree(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "digits", f"dataset={root}", "image_size=12", "epochs=1", "batch_size=4", "width=0.5",
                 "num_workers=0", "device=cpu", f"out_dir={out}", "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    copy, inverted = tmp_path / "copy", tmp_path / "inverted"
    shutil.copytree(root, copy)
    shutil.copytree(root, inverted)
    _invert_jpegs(inverted / "val")
    capsys.readouterr()
    for data, same in ((inverted, False), (root, True), (copy, True)):
        assert main(["eval", str(out), f"dataset={data}", "--device", "cpu"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["same_data_as_run"] is same, data
        assert (result["eval_split_sha256"] == summary["eval_split_sha256"]) is same
        assert result["images_replaced"] == 0
    # the whole set's checksum covers the training files too
    train_changed = tmp_path / "train_changed"
    shutil.copytree(root, train_changed)
    _invert_jpegs(train_changed / "train" / "n01")
    from supermask.data import load_dataset, split_sha256
    from supermask.run.train import data_checksums

    again, changed = (load_dataset(str(d), mode="stream", image_size=12) for d in (copy, train_changed))
    assert data_checksums(again) == {k: summary[k] for k in ("dataset_sha256", "eval_split_sha256")}
    assert split_sha256(changed, "test") == summary["eval_split_sha256"]
    assert data_checksums(changed)["dataset_sha256"] != summary["dataset_sha256"]
    assert summary["images_replaced"] == {"train": 0, "test": 0}


def test_replaced_images_are_counted_in_the_run_and_in_eval(tmp_path: Path, capsys):
    """One undecodable training image and one undecodable evaluation image: every epoch's row, the summary and eval
    count them (decoded by 2 DataLoader workers, whose counts reach the run)."""
    import json

    from supermask.cli import main

    root = _tree(tmp_path / "data")
    for split in ("train", "val"):
        bad = sorted((root / split / "n02").iterdir())[1]
        bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    out = tmp_path / "run"
    assert main(["train", "digits", f"dataset={root}", "image_size=12", "epochs=2", "batch_size=4", "width=0.5",
                 "num_workers=2", "device=cpu", f"out_dir={out}", "-q"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["train_images_replaced"], r["test_images_replaced"]) for r in rows] == [(1, 1), (1, 1)]
    assert json.loads((out / "summary.json").read_text())["images_replaced"] == {"train": 1, "test": 1}
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["images_replaced"] == 1
