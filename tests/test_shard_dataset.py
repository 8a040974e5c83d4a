"""Runs reading a folder of WebDataset shards: detection, per-process batches, equal step counts, exact resume."""

import json
from collections import Counter

import pytest
import torch

pytest.importorskip("webdataset")

import supermask.data  # noqa: E402
from supermask.cli import main  # noqa: E402
from supermask.run.config import make_config  # noqa: E402
from supermask.data.shard_dataset import (  # noqa: E402
    ShardDataset,
    rebatch,
    resume_plan,
    round_robin,
    shard_eval_loader,
    shard_train_loader,
)
from supermask.data.shards import ShardStream  # noqa: E402
from supermask.errors import ConfigError  # noqa: E402
from supermask.run.train import run  # noqa: E402

SIZE = 16


def _shards(imagenet_like, *, workers: int = 2) -> ShardDataset:
    return supermask.data.load_dataset(str(imagenet_like.root / "shards"), mode="auto", image_size=SIZE,
                                       num_workers=workers)


def _keys(batches) -> list[tuple[bytes, int]]:
    """Each sample as (its pixels, its label), in order."""
    return [(x.numpy().tobytes(), int(y)) for xs, ys in batches for x, y in zip(xs, ys)]


# --------------------------------------------------------------------------------------------------------------
# the pure parts: the DataLoader's order, the resume plan, re-batching


def test_round_robin_passes_over_finished_readers():
    # reader 0: 5 samples (batches 2, 2, 1), reader 1: 3 (2, 1), reader 2: none
    assert list(round_robin([5, 3, 0], 2)) == [(0, 2), (1, 2), (0, 2), (1, 1), (0, 1)]
    assert list(round_robin([0, 0], 4)) == []


def test_round_robin_is_the_order_a_dataloader_yields_worker_batches():
    class Counted(torch.utils.data.IterableDataset):
        """Worker w yields batches of 2 of its `counts[w]` samples, each sample tagged with (w, index)."""

        counts = [5, 1]

        def __iter__(self):
            w = torch.utils.data.get_worker_info().id
            n = self.counts[w]
            for start in range(0, n, 2):
                yield torch.tensor([[w, i] for i in range(start, min(n, start + 2))])

    loader = torch.utils.data.DataLoader(Counted(), batch_size=None, num_workers=2)
    got = [(int(b[0, 0]), len(b)) for b in loader]
    assert got == list(round_robin(Counted.counts, 2))


def test_resume_plan_skips_whole_reader_batches_and_drops_the_rest():
    # order: (0,2) (1,2) (0,2) (1,1) (0,1); 5 samples seen = the first two batches whole, then 1 of the third
    assert resume_plan([5, 3], 2, 5) == ([1, 1], 1)
    assert resume_plan([5, 3], 2, 0) == ([0, 0], 0)
    assert resume_plan([5, 3], 2, 7) == ([2, 2], 0)
    assert resume_plan([5, 3], 2, 8) == ([3, 2], 0)


def test_rebatch_cuts_exact_batches_after_dropping():
    def batch(*labels):
        y = torch.tensor(labels, dtype=torch.int64)
        return y[:, None].float(), y

    parts = [batch(0, 1, 2), batch(), batch(3, 4), batch(5, 6, 7, 8), batch(9)]
    got = [y.tolist() for _, y in rebatch(parts, 4, 2, drop=1)]
    assert got == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert [x[:, 0].tolist() for x, _ in rebatch(parts, 4, 2, drop=1)] == got  # images travel with their labels
    with pytest.raises(ConfigError, match="the shards ran out after 2 of 3 batches"):
        list(rebatch(parts, 4, 3, drop=1))


def test_rebatch_stops_reading_once_it_has_its_batches():
    read = []

    def source():
        for i in range(10):
            read.append(i)
            yield torch.zeros(2, 1), torch.full((2,), i)

    assert len(list(rebatch(source(), 4, 2))) == 2
    assert read == [0, 1, 2, 3]  # not the fifth: the DataLoader is left at once


# --------------------------------------------------------------------------------------------------------------
# a folder of shards as a dataset


def test_a_shard_folder_is_found_and_counted(imagenet_like):
    ds = _shards(imagenet_like)
    assert isinstance(ds, ShardDataset) and supermask.data.is_streamed(ds)
    assert (len(ds.train_shards), len(ds.test_shards)) == (4, 2)
    assert (len(ds.train_y), len(ds.test_y), ds.num_classes) == (80, 40, 10)
    assert Counter(ds.train_y.tolist()) == {c: 8 for c in range(10)}  # 8 training images of each class
    assert ds.image_size == SIZE and ds.in_channels == 3
    again = _shards(imagenet_like, workers=0)
    assert again.content_sha256() == ds.content_sha256()


def test_memory_mode_and_missing_evaluation_shards_are_named(imagenet_like, tmp_path):
    with pytest.raises(ConfigError, match="WebDataset shards are streamed.*data_mode=stream"):
        supermask.data.load_dataset(str(imagenet_like.root / "shards"), mode="memory")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "train-000000.tar").write_bytes((imagenet_like.root / "shards" / "train-000000.tar").read_bytes())
    with pytest.raises(ConfigError, match=r"train-\*\.tar but no val-\*\.tar or test-\*\.tar"):
        supermask.data.load_dataset(str(tmp_path / "only"), mode="stream")


def test_a_shard_without_labels_is_named_when_the_run_starts(imagenet_like, tmp_path, capsys):
    from tar_helpers import write_tar

    val = imagenet_like.root / "shards" / "val-000000.tar"
    (tmp_path / "val-000000.tar").write_bytes(val.read_bytes())
    write_tar(tmp_path / "train-000000.tar", {"a.jpg": val.read_bytes()[:10], "a.cls": b"1", "b.jpg": b"x"})
    with pytest.raises(ConfigError, match=r"train-000000\.tar: sample 'b' has no cls \(the label\)"):
        supermask.data.load_dataset(str(tmp_path), mode="auto")
    assert main(["train", "digits", f"dataset={tmp_path}", "device=cpu", f"out_dir={tmp_path / 'r'}", "-q"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "has no cls" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("world", [1, 2])
def test_every_process_takes_the_same_steps_of_disjoint_samples(imagenet_like, world):
    ds = _shards(imagenet_like, workers=1)
    for epoch in (0, 1):
        steps = supermask.data.train_steps(ds, 8, seed=3, epoch=epoch, world=world)
        parts = ShardStream(list(ds.train_shards), SIZE, shuffle=True, augment=True, seed=3, world=world,
                            counts=ds.counts)
        parts.set_epoch(epoch)
        assert steps == min(parts.process_samples()) // (8 // world)
        seen = []
        for rank in range(world):
            batches = list(shard_train_loader(ds, 8, seed=3, epoch=epoch, augment=False, rank=rank, world=world))
            assert len(batches) == steps and all(len(y) == 8 // world for _, y in batches)
            seen += _keys(batches)
        assert len(set(seen)) == len(seen)  # no sample twice (the unaugmented images of this set all differ)
    assert supermask.data.train_steps(ds, 8, world=1) == 10  # 80 samples, all in one process's part


def test_a_batch_that_does_not_split_among_the_processes_is_refused(imagenet_like):
    ds = _shards(imagenet_like)
    with pytest.raises(ConfigError, match="batch_size=9 does not split evenly among 2 processes"):
        supermask.data.train_steps(ds, 9, world=2)
    with pytest.raises(ConfigError, match="batch_size=100 is larger than a process's part"):
        supermask.data.train_steps(ds, 100)


@pytest.mark.parametrize("workers", [0, 2])
def test_start_batch_gives_the_rest_of_the_same_epoch(imagenet_like, workers):
    ds = _shards(imagenet_like, workers=workers)
    kw = {"seed": 5, "epoch": 1, "augment": True, "rank": 1, "world": 2}
    whole = _keys(shard_train_loader(ds, 6, **kw))  # 3 samples a step: some reader batches are cut
    assert len(whole) % 3 == 0 and len(whole) >= 3 * 4
    for start in (1, 2, 4, len(whole) // 3):
        assert _keys(shard_train_loader(ds, 6, start_batch=start, **kw)) == whole[3 * start :]


def test_evaluation_reads_every_sample_once_across_the_processes(imagenet_like):
    ds = _shards(imagenet_like)
    seen = [k for rank in range(3) for k in _keys(shard_eval_loader(ds, 7, rank=rank, world=3))]
    assert len(seen) == 40 and Counter(y for _, y in seen) == {c: 4 for c in range(10)}  # 2 shards: rank 2 reads none
    # the workers' batches interleave, so only the order depends on how many there are
    assert sorted(_keys(shard_eval_loader(ds, 7))) == sorted(_keys(shard_eval_loader(_shards(imagenet_like, workers=0),
                                                                                     7)))


# --------------------------------------------------------------------------------------------------------------
# runs


ARGS = {"model": "conv4", "width": 0.125, "image_size": SIZE, "epochs": 2, "batch_size": 8, "eval_batch_size": 16,
        "num_workers": 2, "device": "cpu", "threads": 1}


def _config(data, out_dir, **overrides):
    return make_config("digits", {**ARGS, "dataset": str(data), "out_dir": str(out_dir), **overrides})


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_train_reads_shards_from_the_command_line(imagenet_like, tmp_path, capsys):
    out = tmp_path / "r"
    keys = [f"{k}={v}" for k, v in {**ARGS, "epochs": 1}.items()]
    assert main(["train", "digits", f"dataset={imagenet_like.root / 'shards'}", *keys, f"out_dir={out}", "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["data_mode"], summary["dataset_source"], summary["num_classes"]) == ("stream", "shards", 10)
    assert summary["image_size"] == SIZE
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_acc"] == summary["test_acc"] and result["same_data_as_run"] is True
    net = tmp_path / "net.smask"
    assert main(["export", str(out), "-o", str(net)]) == 0
    capsys.readouterr()
    assert main(["eval", str(net), "--device", "cpu"]) == 0  # the file records the shard folder and image size
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]


def _interrupted_at(monkeypatch, epoch: int, batch: int) -> None:
    real = supermask.data.train_batches

    def interrupted(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs), start=kwargs.get("start_batch", 0)):
            if kwargs["epoch"] == epoch and i == batch:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(supermask.data, "train_batches", interrupted)


@pytest.mark.parametrize("source", ["shards", "folder"])
def test_a_streamed_run_interrupted_inside_an_epoch_resumes_to_the_same_result(
        imagenet_like, tmp_path, monkeypatch, one_thread, source):
    data = imagenet_like.root / "shards" if source == "shards" else imagenet_like.root
    keys = {"method": "edge-popup+iwr", "iwr_every": 1}
    run(_config(data, tmp_path / "whole", **keys), progress=False)
    _interrupted_at(monkeypatch, epoch=1, batch=7)  # 10 steps an epoch
    with pytest.raises(KeyboardInterrupt):
        run(_config(data, tmp_path / "r", checkpoint_every_steps=3, **keys), progress=False)
    monkeypatch.undo()
    from supermask.run.checkpoint import load_tensors

    meta = load_tensors(tmp_path / "r" / "checkpoint.safetensors")[1]
    assert (meta["epoch"], meta["step"], meta["partial"]["batch"]) == (1, 15, 5)  # steps 16, 17 are lost
    run(_config(data, tmp_path / "r", checkpoint_every_steps=3, **keys), resume=True, progress=False)
    a, b = tmp_path / "whole", tmp_path / "r"
    assert (a / "masks.safetensors").read_bytes() == (b / "masks.safetensors").read_bytes()
    ma, mb = ([{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s", "data_wait")}
               for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b))
    assert ma == mb and len(ma) == 2
    assert json.loads((a / "summary.json").read_text())["iwr_steps"] == json.loads(
        (b / "summary.json").read_text())["iwr_steps"]


def _rewrite_shard(path, change) -> None:
    """Shard `path` rewritten with each jpg member's bytes passed through `change(name, bytes)`, in the same order."""
    import tarfile

    from tar_helpers import write_tar

    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    write_tar(path, {name: change(name, data) if name.endswith(".jpg") else data for name, data in members.items()})


def _inverted_jpeg(_, data: bytes) -> bytes:
    import io

    from PIL import Image, ImageOps

    out = io.BytesIO()
    ImageOps.invert(Image.open(io.BytesIO(data)).convert("RGB")).save(out, "JPEG")
    return out.getvalue()


def test_eval_on_shards_whose_images_changed_is_not_the_same_data(imagenet_like, tmp_path, capsys):
    """Shards keep their names, keys and labels while every evaluation image is inverted: not the run's data. One
    undecodable evaluation image is counted as replaced."""
    import shutil
    import tarfile

    out = tmp_path / "r"
    keys = [f"{k}={v}" for k, v in {**ARGS, "epochs": 1}.items()]
    assert main(["train", "digits", f"dataset={imagenet_like.root / 'shards'}", *keys, f"out_dir={out}", "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    copies = {name: tmp_path / name / "shards" for name in ("inverted", "copy", "broken")}
    for copy in copies.values():
        shutil.copytree(imagenet_like.root / "shards", copy)
    for val in sorted(copies["inverted"].glob("val-*.tar")):
        _rewrite_shard(val, _inverted_jpeg)
    first = min(copies["broken"].glob("val-*.tar"))
    with tarfile.open(first) as tar:
        victim = next(m.name for m in tar if m.name.endswith(".jpg"))
    _rewrite_shard(first, lambda name, data: data[:100] if name == victim else data)  # truncated: undecodable
    capsys.readouterr()
    for name, same, replaced in (("inverted", False, 0), ("copy", True, 0), ("broken", False, 1)):
        assert main(["eval", str(out), f"dataset={copies[name]}", "--device", "cpu"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["same_data_as_run"] is same, name
        assert result["images_replaced"] == replaced, name
    assert summary["images_replaced"] == {"train": 0, "test": 0}
