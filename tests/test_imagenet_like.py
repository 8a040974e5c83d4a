"""The ImageNet-shaped set built from CIFAR-10: layout, sizes, labels, shards and determinism."""

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supermask.data.imagenet_like import build_imagenet_like, fake_wnid, main, random_size
from supermask.errors import ConfigError


def _shard_samples(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_random_size_stays_in_bounds():
    rng = np.random.default_rng(0)
    sizes = np.array([random_size(rng) for _ in range(2000)])
    assert sizes.min() == 150 and sizes.max() == 500  # both ends reached
    ratio = sizes[:, 0] / sizes[:, 1]
    assert ratio.min() >= 3 / 4 - 1e-2 and ratio.max() <= 4 / 3 + 1e-2
    assert len(set(map(tuple, sizes))) > 1500  # sizes really vary


def test_wnids_look_like_wordnet_ids_and_sort_like_labels():
    wnids = [fake_wnid(i) for i in range(1000)]
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert sorted(wnids) == wnids and len(set(wnids)) == 1000


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.fixture
def colors(tmp_path) -> Path:
    """A tiny source folder: class c's images are solid COLORS[c] squares of 8-12 pixels (PNG, lossless)."""
    for split, n in (("train", 4), ("test", 3)):
        for c, color in zip(("a", "b", "c"), COLORS):
            (tmp_path / "src" / split / c).mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (8 + k, 12 - k), color).save(tmp_path / "src" / split / c / f"{k}.png")
    return tmp_path / "src"


def _color(path: Path) -> int:
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=float).mean(axis=(0, 1))
    return int(np.argmin([np.abs(rgb - c).max() for c in COLORS]))


def test_labels_follow_the_images(tmp_path, colors):
    built = build_imagenet_like(tmp_path / "out", per_class=3, val_per_class=2, shard_size=4, source=colors)
    assert built.names == ("a", "b", "c") and built.wnids == tuple(fake_wnid(i) for i in range(3))
    for label, wnid in enumerate(built.wnids):
        files = sorted((built.root / "train" / wnid).glob("*.JPEG"))
        assert len(files) == 3 and all(_color(f) == label for f in files)
    solution = dict(r.split(",") for r in (built.root / "LOC_val_solution.csv").read_text().splitlines()[1:])
    assert len(solution) == 6
    for name, prediction in solution.items():
        assert built.wnids.index(prediction.split()[0]) == _color(built.root / "val" / f"{name}.JPEG")
    for shard in sorted((built.root / "shards").glob("*.tar")):
        for sample in _shard_samples(shard).values():
            img = tmp_path / "x.jpg"
            img.write_bytes(sample["jpg"])
            assert _color(img) == int(sample["cls"])


def test_layout_and_sizes(imagenet_like):
    root = imagenet_like.root
    assert [p.name for p in sorted((root / "train").iterdir())] == list(imagenet_like.wnids)
    assert imagenet_like.names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                   "truck")
    sizes = []
    for wnid in imagenet_like.wnids:
        files = sorted((root / "train" / wnid).glob("*.JPEG"))
        assert len(files) == 8
        for f in files:
            with Image.open(f) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                assert 150 <= img.width <= 500 and 150 <= img.height <= 500
                assert np.asarray(img).std() > 10  # a photo, not a flat colour
                sizes.append(img.size)
    assert len(set(sizes)) > 60  # 80 images of (nearly all) different sizes

    rows = (root / "LOC_val_solution.csv").read_text().splitlines()
    assert rows[0] == "ImageId,PredictionString" and len(rows) == 41
    labels = {r.split(",")[0]: imagenet_like.wnids.index(r.split(",")[1].split()[0]) for r in rows[1:]}
    assert sorted(p.stem for p in (root / "val").glob("*.JPEG")) == sorted(labels)
    assert np.bincount(list(labels.values())).tolist() == [4] * 10
    assert list(labels.values())[:10] != sorted(list(labels.values())[:10])  # the classes are interleaved
    mapping = (root / "LOC_synset_mapping.txt").read_text().splitlines()
    assert mapping == [f"{w} {c}" for w, c in zip(imagenet_like.wnids, imagenet_like.names)]


def test_shards_hold_the_folder_images(imagenet_like):
    root = imagenet_like.root
    assert imagenet_like.train_shards == str(root / "shards" / "train-{000000..000003}.tar")
    assert imagenet_like.val_shards == str(root / "shards" / "val-{000000..000001}.tar")
    train = [_shard_samples(root / "shards" / f"train-{i:06d}.tar") for i in range(4)]
    assert [len(s) for s in train] == [20] * 4
    seen = set()
    for shard in train:
        assert len({int(s["cls"]) for s in shard.values()}) > 3  # shuffled: shards mix the classes
        for key, sample in shard.items():
            assert set(sample) == {"jpg", "cls"}
            wnid = key.split("_")[0]
            assert sample["jpg"] == (root / "train" / wnid / f"{key}.JPEG").read_bytes()
            assert int(sample["cls"].decode("ascii")) == imagenet_like.wnids.index(wnid)
            seen.add(key)
    assert len(seen) == 80
    val = {**_shard_samples(root / "shards" / "val-000000.tar"), **_shard_samples(root / "shards" / "val-000001.tar")}
    solution = dict(r.split(",") for r in (root / "LOC_val_solution.csv").read_text().splitlines()[1:])
    assert len(val) == 40
    for key, sample in val.items():
        assert sample["jpg"] == (root / "val" / f"{key}.JPEG").read_bytes()
        assert imagenet_like.wnids[int(sample["cls"])] == solution[key].split()[0]


def test_same_seed_same_bytes_other_seed_other_sizes(tmp_path, colors):
    a, b, c = (build_imagenet_like(tmp_path / name, per_class=2, val_per_class=1, shard_size=4, seed=seed,
                                   source=colors) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in files)
    sizes = [Image.open(p).size for p in sorted((a.root / "train").rglob("*.JPEG"))]
    assert sizes != [Image.open(p).size for p in sorted((c.root / "train").rglob("*.JPEG"))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "src"]  # no build folder left behind


def test_a_tarball_source_reads_like_its_folder(tmp_path, colors):
    with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tar:
        tar.add(colors, arcname="copy")  # under one top folder, as archives often are
    a = build_imagenet_like(tmp_path / "a", per_class=2, val_per_class=1, source=colors)
    b = build_imagenet_like(tmp_path / "b", per_class=2, val_per_class=1, source=tmp_path / "src.tar.gz")
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in files)


def test_bad_requests_are_one_line_errors(tmp_path, colors, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="already exists"):
        build_imagenet_like(tmp_path / "full", source=colors)
    with pytest.raises(ConfigError, match="test/a has 3 images, fewer than the 4 asked for"):
        build_imagenet_like(tmp_path / "big", per_class=1, val_per_class=4, source=colors)
    with pytest.raises(ConfigError, match="no such image folder"):
        build_imagenet_like(tmp_path / "none", source=tmp_path / "missing.tar.gz")
    assert not (tmp_path / "big").exists() and not (tmp_path / "none").exists()
    assert main([str(tmp_path / "n"), "--per-class", "0", "--source", str(colors)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "per_class" in err and "got 0" in err


def test_the_stream_source_reads_it(imagenet_like):
    from supermask.data.stream import index_image_folder

    index = index_image_folder(imagenet_like.root)
    assert index.classes == imagenet_like.wnids and len(index.train) == 80 and len(index.test) == 40
    solution = dict(r.split(",") for r in (imagenet_like.root / "LOC_val_solution.csv").read_text().splitlines()[1:])
    for file, label in zip(index.test.files, index.test.labels):
        assert imagenet_like.wnids[label] == solution[Path(file.decode()).stem].split()[0]


def test_a_source_image_that_cannot_be_decoded_is_a_one_line_error(tmp_path, colors):
    (colors / "train" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"train/a/0\.png: cannot decode this source image"):
        build_imagenet_like(tmp_path / "out", per_class=1, val_per_class=1, source=colors)
    assert not (tmp_path / "out").exists()
