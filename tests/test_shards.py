"""WebDataset shards: splitting among processes and workers, seeded order, transforms, errors."""

import hashlib
import importlib
import io
import sys
from collections import Counter

import pytest
import torch
from PIL import Image

pytest.importorskip("webdataset")

from supermask.data.shards import ShardStream, _key_index, count_samples, expand_shards, shard_loader  # noqa: E402
from supermask.data.transforms import eval_transform, sample_rng, train_transform  # noqa: E402
from supermask.errors import ConfigError  # noqa: E402
from tar_helpers import write_tar  # noqa: E402

SIZE = 32


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


def _epoch(stream: ShardStream, epoch: int = 0, workers: int = 0) -> list[tuple[str, int]]:
    """(image digest, label) of every sample of one epoch, in the order read."""
    return [(_digest(x), int(y)) for xs, ys in shard_loader(stream, 7, epoch=epoch, num_workers=workers)
            for x, y in zip(xs, ys)]


def _jpeg(color=(200, 30, 30), size=(60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def test_brace_patterns_lists_and_missing_files(imagenet_like, tmp_path):
    urls = expand_shards(imagenet_like.train_shards)
    assert urls == [str(imagenet_like.root / "shards" / f"train-{i:06d}.tar") for i in range(4)]
    assert expand_shards(f"{imagenet_like.train_shards}::{imagenet_like.val_shards}")[4:] == [
        str(imagenet_like.root / "shards" / f"val-{i:06d}.tar") for i in range(2)]
    assert expand_shards(urls[:2]) == urls[:2]
    assert expand_shards(f"file://{urls[0]}") == [f"file://{urls[0]}"]
    with pytest.raises(ConfigError, match=r"train-000004\.tar: no such shard file"):
        expand_shards(str(imagenet_like.root / "shards" / "train-{000000..000004}.tar"))
    with pytest.raises(ConfigError, match="no shards"):
        expand_shards([])


@pytest.mark.parametrize("world,workers", [(1, 1), (1, 2), (2, 1), (2, 2), (1, 4), (4, 1)])
def test_readers_split_the_shards_disjointly(imagenet_like, world, workers):
    for epoch in (0, 1):
        parts = []
        for rank in range(world):
            s = ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, seed=3, rank=rank,
                            world=world)
            s.set_epoch(epoch)
            parts += [s.reader_shards(w, workers) for w in range(workers)]
        flat = [u for p in parts for u in p]
        assert sorted(flat) == expand_shards(imagenet_like.train_shards)  # each shard read once
        assert all(len(p) == 4 // (world * workers) for p in parts)


def test_shard_order_is_seeded_by_seed_and_epoch(imagenet_like):
    def order(seed, epoch):
        s = ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, seed=seed)
        s.set_epoch(epoch)
        return s.reader_shards()

    assert order(0, 0) == order(0, 0)
    assert len({tuple(order(0, e)) for e in range(6)}) > 1 and len({tuple(order(s, 0)) for s in range(6)}) > 1
    ev = ShardStream(imagenet_like.train_shards, SIZE, shuffle=False, augment=False)
    ev.set_epoch(5)
    assert ev.reader_shards() == expand_shards(imagenet_like.train_shards)  # evaluation keeps the order


def test_too_few_shards_for_the_readers_is_refused(imagenet_like):
    with pytest.raises(ConfigError, match="4 shards cannot be split among 5 processes"):
        ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, rank=0, world=5)
    s = ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, rank=1, world=2)
    with pytest.raises(ConfigError, match="2 shards cannot be split among 3 DataLoader workers in each of 2 processes"):
        shard_loader(s, 8, num_workers=3)


def test_an_epoch_is_every_sample_once_seeded_and_reshuffled(imagenet_like):
    stream = ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, seed=1, shuffle_buffer=30)
    first = _epoch(stream, 0)
    assert len(first) == 80 and len({d for d, _ in first}) == 80
    assert Counter(y for _, y in first) == Counter({c: 8 for c in range(10)})
    assert _epoch(stream, 0) == first  # same seed and epoch: same order and pixels
    second = _epoch(stream, 1)
    assert [y for _, y in second] != [y for _, y in first] and not {d for d, _ in first} & {d for d, _ in second}
    other = ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, seed=2, shuffle_buffer=30)
    assert [y for _, y in _epoch(other, 0)] != [y for _, y in first]


def test_processes_and_workers_read_disjoint_parts_with_the_same_augmentation(imagenet_like):
    """An image's crop depends on (seed, epoch, key) only, so splitting the readers only reorders the epoch."""
    alone = _epoch(ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, seed=1), 2)
    split = []
    for rank in range(2):
        s = ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, seed=1, rank=rank, world=2)
        split += _epoch(s, 2, workers=2)
    assert sorted(split) == sorted(alone) and len(set(split)) == 80
    again = []
    for rank in range(2):
        s = ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, seed=1, rank=rank, world=2)
        again += _epoch(s, 2, workers=2)
    assert again == split  # worker interleaving is deterministic too


def test_the_transforms_are_the_folder_sources(imagenet_like):
    root = imagenet_like.root
    solution = dict(r.split(",") for r in (root / "LOC_val_solution.csv").read_text().splitlines()[1:])
    expected = []
    for name, prediction in solution.items():
        with Image.open(root / "val" / f"{name}.JPEG") as img:
            expected.append((_digest(eval_transform(img, SIZE)), imagenet_like.wnids.index(prediction.split()[0])))
    got = _epoch(ShardStream(imagenet_like.val_shards, SIZE, shuffle=False, augment=False), 0, workers=2)
    assert sorted(got) == sorted(expected)

    wnid = imagenet_like.wnids[3]
    path = sorted((root / "train" / wnid).glob("*.JPEG"))[0]
    with Image.open(path) as img:
        want = train_transform(img, SIZE, sample_rng(5, 1, _key_index(path.stem)))
    stream = ShardStream(imagenet_like.train_shards, SIZE, shuffle=True, augment=True, seed=5)
    assert (_digest(want), 3) in _epoch(stream, 1)


def test_a_sample_without_a_label_names_the_shard_and_key(tmp_path):
    shard = write_tar(tmp_path / "s-0.tar", {"a.jpg": _jpeg(), "a.cls": b"1", "b.jpg": _jpeg(), "b.json": b"{}"})
    stream = ShardStream(str(shard), SIZE, shuffle=True, augment=True)
    with pytest.raises(ConfigError, match=r"s-0\.tar: sample 'b' has no cls \(the label\); it has jpg, json"):
        _epoch(stream)
    with pytest.raises(ConfigError, match=r"s-0\.tar: sample 'b' has no cls"):  # raised in a worker, still named
        _epoch(stream, workers=1)
    shard = write_tar(tmp_path / "s-1.tar", {"a.txt": b"hi", "a.cls": b"1"})
    with pytest.raises(ConfigError, match=r"s-1\.tar: sample 'a' has no image \(jpg, jpeg or png\); it has cls, txt"):
        _epoch(ShardStream(str(shard), SIZE, shuffle=False, augment=False))
    shard = write_tar(tmp_path / "s-2.tar", {"a.png": _jpeg(), "a.cls": b"cat"})
    with pytest.raises(ConfigError, match=r"s-2\.tar: sample 'a': cls is b'cat', not an integer label"):
        _epoch(ShardStream(str(shard), SIZE, shuffle=False, augment=False))


def test_a_corrupt_image_is_named_and_replaced_by_the_next_decodable_one(tmp_path, capfd):
    good, red = _jpeg(), _jpeg(color=(0, 0, 250))
    shard = write_tar(tmp_path / "s-0.tar", {"a.jpg": good, "a.cls": b"0", "b.jpg": good[: len(good) // 3],
                                              "b.cls": b"1", "c.jpeg": b"not a jpeg", "c.cls": b"2",
                                              "d.png": red, "d.cls": b"3", "e.jpg": b"", "e.cls": b"4"})
    got = _epoch(ShardStream(str(shard), SIZE, shuffle=False, augment=False))
    # one sample out per sample in, so a reader's count is its shards' count: b and c become d, e (last) becomes d
    assert [y for _, y in got] == [0, 3, 3, 3, 3]
    assert len({d for d, _ in got[1:]}) == 1 and got[0][0] != got[1][0]
    err = capfd.readouterr().err
    assert "skipping" in err and f"{shard}: b.jpg" in err and f"{shard}: c.jpeg" in err and f"{shard}: e.jpg" in err


def test_a_shard_of_undecodable_images_is_an_error_not_an_empty_epoch(tmp_path):
    shard = write_tar(tmp_path / "s-0.tar", {"a.jpg": b"x", "a.cls": b"0", "b.jpg": b"y", "b.cls": b"1"})
    with pytest.raises(ConfigError, match=r"no image of .*s-0\.tar can be decoded"):
        _epoch(ShardStream(str(shard), SIZE, shuffle=False, augment=False))
    many = {f"k{i:02d}.{ext}": (b"bad" if ext == "jpg" else b"0") for i in range(20) for ext in ("jpg", "cls")}
    shard = write_tar(tmp_path / "s-1.tar", many)
    with pytest.raises(ConfigError, match=r"s-1\.tar: 16 images in a row cannot be decoded, the last 'k15'"):
        _epoch(ShardStream(str(shard), SIZE, shuffle=False, augment=False))


def test_a_file_that_is_not_a_tar_names_it(tmp_path):
    (tmp_path / "bad-0.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(ConfigError, match=r"bad-0\.tar: cannot read shard"):
        _epoch(ShardStream(str(tmp_path / "bad-0.tar"), SIZE, shuffle=True, augment=True))


def test_urls_that_webdataset_opens_read_like_the_file(imagenet_like):
    path = expand_shards(imagenet_like.val_shards)[0]
    local = _epoch(ShardStream(path, SIZE, shuffle=False, augment=False))
    assert len(local) == 20
    assert _epoch(ShardStream(f"pipe:cat {path}", SIZE, shuffle=False, augment=False)) == local
    assert _epoch(ShardStream(f"file://{path}", SIZE, shuffle=False, augment=False)) == local
    with pytest.raises(ConfigError, match=r"pipe:cat /nonexistent/x\.tar: cannot read shard"):
        _epoch(ShardStream("pipe:cat /nonexistent/x.tar", SIZE, shuffle=False, augment=False))


def test_sample_counts_come_from_tar_headers(imagenet_like, tmp_path):
    urls = expand_shards(imagenet_like.train_shards)
    assert [count_samples(u) for u in urls] == [20, 20, 20, 20]
    files = {"a.jpg": _jpeg(), "a.cls": b"1", "d/e.JPG": _jpeg(), "d/e.cls": b"2", "b.c.png": _jpeg(), "b.c.cls": b"3",
             "c.cls": b"4", "f.json": b"{}"}
    shard = write_tar(tmp_path / "s-0.tar", files)
    # keys split as the reader splits them: a and d/e have an image; b's files are c.png and c.cls; c, f have none
    assert count_samples(str(shard)) == 2
    uneven = urls + [str(shard)]
    for epoch in range(4):
        s = ShardStream(uneven, SIZE, shuffle=True, augment=True, world=2)
        s.set_epoch(epoch)
        counts = s.process_samples()
        assert sum(counts) == 82 and len(set(counts)) == 2  # 5 shards: one process has one more
        for rank in range(2):  # each process's count is what it reads
            r = ShardStream(uneven, SIZE, shuffle=True, augment=True, rank=rank, world=2)
            assert counts[rank] == sum(count_samples(u) for u in (r.set_epoch(epoch) or r.reader_shards()))
    with pytest.raises(ConfigError, match="only local shards"):
        count_samples("https://example.com/x.tar")
    (tmp_path / "bad.tar").write_bytes(b"x" * 100)
    with pytest.raises(ConfigError, match=r"bad\.tar: cannot read shard"):
        count_samples(str(tmp_path / "bad.tar"))


def test_without_webdataset_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # `import webdataset` now raises ImportError
    monkeypatch.delitem(sys.modules, "supermask.data.shards")
    with pytest.raises(ConfigError, match=r"need the webdataset package: pip install 'supermask\[stream\]'"):
        importlib.import_module("supermask.data.shards")
