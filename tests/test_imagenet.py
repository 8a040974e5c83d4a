"""The paper's ImageNet runs as the built-in `imagenet` config: the resolved recipe, its learning-rate rule, where
`dataset=imagenet` is looked for, and a tiny run of the config through the CLI on an ImageNet-layout folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supermask.cli import main
from supermask.run.config import make_config
from supermask.run.schedule import epoch_fires, planned_steps
from supermask.run.train import learning_rate

WNIDS = ("n01440764", "n01443537", "n01484850")


def _imagenet(root: Path, per_class: int = 4) -> Path:
    """train/<wnid>/*.JPEG of random sizes and val/ flat with Kaggle's LOC_val_solution.csv, as ImageNet ships."""
    rng = np.random.default_rng(0)

    def jpeg(path: Path) -> None:
        w, h = (int(v) for v in rng.integers(24, 90, 2))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, "JPEG")

    rows = []
    for c in WNIDS:
        for i in range(per_class):
            jpeg(root / "train" / c / f"{c}_{i}.JPEG")
            name = f"ILSVRC2012_val_{c}_{i}"
            jpeg(root / "val" / f"{name}.JPEG")
            rows.append(f"{name},{c} 1 2 30 40")
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return root


def _fired(cfg) -> list[int]:
    return [t for t in range(cfg.epochs) if epoch_fires(t, cfg.iwr_every, cfg.epochs, cfg.iwr_warmup)]


def test_edge_popup_iwr_is_the_papers_imagenet_recipe():
    cfg = make_config("imagenet", {"method": "edge-popup+iwr"})
    assert (cfg.model, cfg.dataset, cfg.method, cfg.label, cfg.prune_rate) == (
        "resnet50", "imagenet", "edge-popup", "edge-popup+iwr", 0.7)
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.label_smoothing) == (
        "sgd", 0.875, False, 2**-15, 0.1)
    assert (cfg.batch_size, cfg.lr, cfg.lr_scaling, cfg.lr_schedule, cfg.warmup_epochs) == (
        256, 0.1, "linear", "cosine", 5)
    assert (cfg.epochs, cfg.iwr_every, cfg.iwr_rate, cfg.iwr_warmup) == (100, 10, 0.2, 0)
    assert _fired(cfg) == [10, 20, 30, 40, 50, 60, 70, 80, 90]  # never the last epoch (99)
    assert planned_steps(cfg, 5005)["iwr"] == 9
    assert make_config("imagenet").method == "edge-popup" and make_config("imagenet").iwr_every == 10  # the default


def test_biprop_iwr_recycles_after_its_40_epoch_warm_up_for_150_epochs():
    cfg = make_config("imagenet", {"method": "biprop+iwr"})
    assert (cfg.method, cfg.weight_init, cfg.scale_fan, cfg.epochs) == ("biprop", "kaiming-normal", True, 150)
    assert (cfg.iwr_every, cfg.iwr_rate, cfg.iwr_warmup) == (10, 0.2, 40)
    assert _fired(cfg) == list(range(50, 150, 10))  # t > 40 and t % 10 == 0, the last epoch (149) excluded
    # plain methods on ResNet-50 take ImageNet's 100 epochs, not CIFAR's 250
    assert make_config("imagenet", {"method": "edge-popup"}).epochs == 100
    assert make_config("imagenet", {"method": "biprop"}).epochs == 100


def test_a_short_run_scales_the_period_and_warm_up_to_its_length():
    cfg = make_config("imagenet", {"method": "biprop+iwr", "epochs": 30})
    assert (cfg.iwr_every, cfg.iwr_warmup) == (2, 8)  # round(10 * 30 / 150), round(40 * 30 / 150)
    assert _fired(cfg) == [10, 12, 14, 16, 18, 20, 22, 24, 26, 28]


def test_learning_rate_is_per_256_images_of_the_global_batch():
    cfg = make_config("imagenet")
    # warm-up: 0.1 * (e + 1) / 5, then cosine over the other 95 epochs
    assert [round(learning_rate(cfg, e), 12) for e in range(6)] == [0.02, 0.04, 0.06, 0.08, 0.1, 0.1]
    assert learning_rate(cfg, 99) == pytest.approx(0.05 * (1 + math.cos(math.pi * 94 / 95)))
    # batch_size is the global batch: 2 torchrun processes of 128 images each are batch_size=256, so lr 0.1; the
    # lr depends on the batch alone, never on the process count
    assert make_config("imagenet", {"batch_size": 256}).peak_lr == 0.1
    assert make_config("imagenet", {"batch_size": 128}).peak_lr == 0.05
    big = make_config("imagenet", {"batch_size": 1024})
    assert big.peak_lr == 0.4 and learning_rate(big, 0) == pytest.approx(0.08)
    assert make_config("imagenet", {"batch_size": 128, "lr_scaling": "none"}).peak_lr == 0.1
    assert make_config("conv4").lr_scaling == "none" and make_config("conv4", {"batch_size": 512}).peak_lr == 0.1


def test_bad_lr_scaling_is_named(capsys):
    assert main(["configs", "imagenet", "lr_scaling=sqrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "supermask: error: unknown lr_scaling 'sqrt': expected one of none, linear"


def test_missing_imagenet_says_where_it_looked_and_how_to_lay_it_out(tmp_path, capsys):
    code = main(["train", "imagenet", f"data_dir={tmp_path}", f"out_dir={tmp_path / 'run'}", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for needle in (str(tmp_path / "imagenet"), "cannot be downloaded automatically", "image-net.org",
                   "train/<wnid>/*.JPEG", "LOC_val_solution.csv"):
        assert needle in err
    assert not (tmp_path / "run").exists()
    assert main(["train", "imagenet", f"data_dir={tmp_path}", "data_mode=memory", "-q"]) == 2
    assert "imagenet is streamed (data_mode=stream or auto)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run of the imagenet config (EP+IWR, its recipe, tiny width, 32 pixels, 1 epoch) on DATA/imagenet."""
    data = tmp_path_factory.mktemp("data")
    _imagenet(data / "imagenet")
    out = data.parent / "run"
    code = main(["train", "imagenet", f"data_dir={data}", "width=0.05", "image_size=32", "epochs=1", "batch_size=4",
                 "eval_batch_size=5", "num_workers=0", "device=cpu", f"out_dir={out}", "-q"])
    assert code == 0
    return data, out


def test_the_imagenet_config_runs_end_to_end_on_an_imagenet_folder(imagenet_run, capsys):
    data, out = imagenet_run
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["model"], summary["method"], summary["dataset"], summary["dataset_source"]) == (
        "resnet50", "edge-popup+iwr", "imagenet", "imagenet")
    assert (summary["num_classes"], summary["image_size"], summary["epochs"]) == (3, 32, 1)
    assert (summary["lr_scaling"], summary["scheduled_peak_lr"]) == ("linear", 0.1 * 4 / 256)
    # 1 epoch of 5 warm-up epochs: the highest rate used is a fifth of the scheduled peak, and no key calls the
    # scheduled one the peak
    assert summary["max_lr_used"] == pytest.approx(0.1 * 4 / 256 / 5) and "peak_lr" not in summary
    assert summary["params_kept"] == pytest.approx(0.3 * summary["params_total"], abs=200)  # floor per layer
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs[0]["lr"] == pytest.approx(0.1 * 4 / 256 / 5)  # the first of the 5 warm-up epochs
    saved = (out / "config.yaml").read_text()
    assert "dataset: imagenet" in saved and f"data_dir: {data}" in saved  # eval finds it again from any directory


def test_eval_of_a_streamed_run_and_of_its_smask(imagenet_run, tmp_path, capsys):
    data, out = imagenet_run
    recorded = json.loads((out / "summary.json").read_text())
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_acc"] == result["recorded_test_acc"] == recorded["test_acc"]
    assert result["same_data_as_run"] is True and result["dataset_source"] == "imagenet"
    net = tmp_path / "net.smask"
    assert main(["export", str(out), "-o", str(net)]) == 0
    capsys.readouterr()
    # the file names the dataset (imagenet) and its image size; data_dir says where it is on this machine
    assert main(["eval", str(net), f"data_dir={data}", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_acc"] == recorded["test_acc"] and result["same_data_as_run"] is True


def test_data_mode_memory_on_an_imagenet_layout_says_to_stream(tmp_path, capsys):
    from supermask.data import load_dataset
    from supermask.errors import ConfigError

    root = _imagenet(tmp_path / "inet", per_class=1)
    with pytest.raises(ConfigError, match=r"evaluation split is val/ .*use data_mode=stream \(or auto\)"):
        load_dataset(str(root), mode="memory")
    (root / "val").rename(root / "test")  # flat test/ with a labels file: a layout only streams read too
    (root / "LOC_val_solution.csv").rename(root / "LOC_test_solution.csv")
    with pytest.raises(ConfigError, match=r"test/ holds images without class folders.*use data_mode=stream"):
        load_dataset(str(root), mode="memory")
    assert load_dataset(str(root), mode="stream", num_workers=0).num_classes == 3
    # under auto, such a layout gets the streamed index's own error, not the in-memory loader's
    (root / "LOC_test_solution.csv").unlink()
    with pytest.raises(ConfigError, match=r"images without class folders need a labels file"):
        load_dataset(str(root), mode="auto")
    code = main(["train", "digits", f"dataset={root}", "data_mode=memory", "-q", f"out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and "use data_mode=stream" in err and "same class folders" not in err


def test_runs_together_refuse_a_streamed_set_in_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    _imagenet(data / "imagenet", per_class=1)
    code = main(["study", "imagenet", f"data_dir={data}", "width=0.05", "image_size=32", "epochs=1", "device=cpu",
                 f"out_dir={tmp_path / 'st'}", "--score-seeds", "2", "--together", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "imagenet is streamed" in err and "without --together" in err
    assert not (tmp_path / "st" / "runs").exists() or not any((tmp_path / "st" / "runs").iterdir())


def test_a_hidden_file_beside_test_class_folders_keeps_a_set_in_memory(tmp_path):
    from supermask.data import Dataset, load_dataset

    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (90, 40, 200)).save(tmp_path / split / c / "0.png")
    (tmp_path / "test" / "._0.png").write_bytes(b"macOS resource fork")  # ignored by the in-memory reader too
    assert isinstance(load_dataset(str(tmp_path), mode="memory"), Dataset)
