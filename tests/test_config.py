"""Config loading, overrides, method-dependent defaults, and one-line errors for bad values."""

import pytest

from supermask import ConfigError
from supermask.config import builtin_configs, make_config, parse_overrides


def test_builtin_configs_cover_the_paper():
    assert {"conv2", "conv4", "conv6", "conv8", "resnet18", "digits", "mnist"} <= set(builtin_configs())
    for name in builtin_configs():
        cfg = make_config(name)
        assert cfg.epochs >= 1 and cfg.lr > 0


def test_method_defaults_follow_the_paper():
    ep = make_config("conv4")
    assert (ep.method, ep.epochs, ep.lr, ep.weight_init, ep.scale_fan) == ("edge-popup", 250, 0.1, "signed-constant", False)
    bp = make_config("conv4", {"method": "biprop"})
    assert (bp.weight_init, bp.scale_fan, bp.epochs) == ("kaiming-normal", True, 250)
    dense = make_config("conv4", {"method": "dense"})
    assert (dense.lr, dense.epochs, dense.weight_init) == (0.01, 100, "kaiming-normal")
    assert make_config("resnet18").weight_decay == 5e-4
    # explicit values win over the method's defaults
    assert make_config("conv4", {"method": "dense", "lr": 0.05, "epochs": 3}).lr == 0.05


def test_overrides_are_parsed_as_yaml_scalars():
    o = parse_overrides(["prune_rate=0.9", "width=0.25", "epochs=10", "nesterov=true", "skip_layers=[first, last]"])
    assert o == {"prune_rate": 0.9, "width": 0.25, "epochs": 10, "nesterov": True, "skip_layers": ["first", "last"]}
    cfg = make_config("conv4", o)
    assert (cfg.prune_rate, cfg.width, cfg.epochs, cfg.skip_layers) == (0.9, 0.25, 10, ["first", "last"])


@pytest.mark.parametrize("overrides, fragment", [
    ({"model": "vgg"}, "unknown model 'vgg'"),
    ({"method": "popup"}, "unknown method 'popup'"),
    ({"foo": 1}, "unknown config key 'foo'"),
    ({"prune_rate": 1.0}, "prune_rate 1.0 is outside [0, 1)"),
    ({"prune_rate": -0.5}, "prune_rate -0.5"),
    ({"epochs": "abc"}, "epochs='abc'"),
    ({"epochs": 2.5}, "epochs=2.5"),
    ({"epochs": 0}, "epochs=0"),
    ({"width": 0}, "width=0"),
    ({"nesterov": "maybe"}, "nesterov='maybe'"),
    ({"weight_init": "xavier"}, "unknown weight_init 'xavier'"),
])
def test_bad_values_name_the_value(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        make_config("conv4", overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="unknown config 'conv5'"):
        make_config("conv5")
    with pytest.raises(ConfigError, match="not found"):
        make_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: conv4\n  method: [biprop\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        make_config(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        make_config(str(listy))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["prune_rate"])


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: conv2\nmethod: biprop\nprune_rate: 0.2\n")
    cfg = make_config(str(path), {"prune_rate": 0.3})
    assert (cfg.model, cfg.method, cfg.prune_rate) == ("conv2", "biprop", 0.3)
