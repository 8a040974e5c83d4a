"""Config loading, overrides, method-dependent defaults, and one-line errors for bad values."""

import pytest
import yaml

from supermask import ConfigError
from supermask.run.config import builtin_configs, make_config, parse_overrides


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


# --------------------------------------------------------------------------------------------------------------
# values that used to pass validation or fail late


@pytest.mark.parametrize("key, value", [
    ("momentum", float("nan")), ("weight_decay", float("nan")),
    ("lr", float("inf")), ("width", float("nan")), ("prune_rate", float("nan")), ("iwr_rate", float("nan")),
    ("label_smoothing", float("-inf")),
])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"{key}=.*finite number"):
        make_config("digits", {key: value})


@pytest.mark.parametrize("key, value", [("epochs", float("inf")), ("epochs", float("nan")), ("batch_size", 1e400)])
def test_non_finite_values_of_integer_keys_are_refused_as_integers(key, value):
    with pytest.raises(ConfigError, match=rf"{key}=.* must be an integer in \[1, 9223372036854775807\]"):
        make_config("digits", {key: value})


def test_non_finite_yaml_spellings_are_refused():
    for text in ("momentum=.nan", "weight_decay=.nan", "lr=-.Inf"):
        with pytest.raises(ConfigError, match="finite number"):
            make_config("digits", parse_overrides([text]))
    with pytest.raises(ConfigError, match=r"epochs=inf must be an integer in \[1, "):
        make_config("digits", parse_overrides(["epochs=.inf"]))


SEED_RANGE = "must be an integer in [0, 9223372036854775807]"


@pytest.mark.parametrize("text, message", [
    # an integer is never rounded through a float: 2**63 - 1 is the largest seed, 2**64 is out of range
    ("score_seed=18446744073709551616", f"score_seed=18446744073709551616 {SEED_RANGE}"),
    ("weight_seed=9223372036854775808", f"weight_seed=9223372036854775808 {SEED_RANGE}"),
    ("data_seed=-1", f"data_seed=-1 {SEED_RANGE}"),
    ("epochs=1.5", "epochs=1.5 must be an integer in [1, 9223372036854775807]"),
    ("epochs=0", "epochs=0 must be an integer in [1, 9223372036854775807]"),
    ("batch_size=1e99", "batch_size='1e99' must be an integer in [1, 9223372036854775807]"),
    ("batch_size=ten", "batch_size='ten' must be an integer in [1, 9223372036854775807]"),
    ("num_workers=-1", "num_workers=-1 must be an integer in [0, 9223372036854775807]"),
    ("iwr_every=0", "iwr_every=0 must be an integer in [1, 9223372036854775807]"),
])
def test_integer_keys_name_their_range(text, message):
    with pytest.raises(ConfigError) as e:
        make_config("digits", parse_overrides([text]))
    assert str(e.value) == message


def test_integers_are_taken_exactly_and_whole_numbers_in_any_spelling():
    top = 2**63 - 1
    cfg = make_config("digits", parse_overrides([f"weight_seed={top}", f"score_seed={top}", f"data_seed={top}"]))
    assert (cfg.weight_seed, cfg.score_seed, cfg.data_seed) == (top, top, top)
    # YAML 1.1 reads 1e9 (no dot) as a string: it is still the whole number 10**9
    assert make_config("digits", parse_overrides(["batch_size=1e9", "epochs=2.0"])).batch_size == 10**9
    assert make_config("digits", {"epochs": "3"}).epochs == 3


def test_a_study_whose_seeds_would_leave_the_range_is_refused(tmp_path):
    from supermask.multi.study import study_configs

    base = make_config("digits", {"score_seed": 2**63 - 2, "out_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="score_seed=9223372036854775808: seeds must be integers in"):
        study_configs(base, 3)
    assert len(study_configs(base, 2)) == 2  # 2**63 - 2 and 2**63 - 1


@pytest.mark.parametrize("value", [1, 2, 1.5, -0.1])
def test_momentum_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match=rf"momentum={float(value)!r} is outside \[0, 1\)"):
        make_config("digits", {"momentum": value})
    assert make_config("digits", {"momentum": 0.99}).momentum == 0.99


@pytest.mark.parametrize("overrides, fragment", [
    ({"label_smoothing": 2}, "label_smoothing=2"),
    ({"label_smoothing": -0.1}, "label_smoothing=-0.1"),
    ({"nesterov": True, "momentum": 0}, "nesterov=true needs momentum > 0"),
    ({"data_seed": -1}, "data_seed=-1"),
    ({"weight_seed": -3}, "weight_seed=-3"),
    ({"batch_size": None}, "batch_size needs a value"),
    ({"skip_layers": [["a"]]}, "skip_layers="),
])
def test_values_refused_before_anything_runs(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        make_config("digits", overrides)
    assert fragment in str(e.value)


def test_nesterov_with_momentum_and_adam_without_it_are_fine():
    assert make_config("digits", {"nesterov": True, "momentum": 0.9}).nesterov
    assert make_config("digits", {"nesterov": True, "momentum": 0, "optimizer": "adam"}).optimizer == "adam"


def test_empty_override_is_refused_and_null_is_explicit():
    with pytest.raises(ConfigError, match="'epochs=' has no value"):
        parse_overrides(["epochs="])
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["lr=  "])
    assert make_config("digits", parse_overrides(["epochs=null"])).epochs == 250  # the papers' recipe, asked for


def test_glob_override_is_a_plain_string():
    assert parse_overrides(["skip_layers=*"]) == {"skip_layers": "*"}
    assert parse_overrides(["skip_layers=*conv*"]) == {"skip_layers": "*conv*"}
    assert make_config("digits", parse_overrides(["skip_layers=*"])).skip_layers == ["*"]
    assert parse_overrides(["skip_layers=[first, last]"]) == {"skip_layers": ["first", "last"]}


# --------------------------------------------------------------------------------------------------------------
# one set of defaults: the dataclass, an empty file and the default job agree


def test_defaults_are_the_default_job(tmp_path):
    digits = make_config("digits").to_dict()
    assert make_config({}).to_dict() == digits
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert make_config(str(empty)).to_dict() == digits
    assert (digits["model"], digits["dataset"], digits["epochs"], digits["batch_size"]) == ("small-conv", "digits", 20, 64)
    # a file naming only the model takes the rest from the same defaults
    only = tmp_path / "only.yaml"
    only.write_text("model: conv4\ndataset: cifar10\n")
    assert (make_config(str(only)).epochs, make_config(str(only)).batch_size) == (20, 64)


def test_non_utf8_config_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: conv4\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        make_config(str(path))


# --------------------------------------------------------------------------------------------------------------
# method shorthands: explicit keys win, periods follow the run length


def test_explicit_iterand_period_replaces_the_presets_other_one():
    cfg = make_config("digits", {"method": "iterand", "iterand_every_epochs": 2})
    assert (cfg.iterand_every_epochs, cfg.iterand_every_steps, cfg.iterand_rate) == (2, None, 0.1)
    cfg = make_config("digits", {"method": "iterand", "iterand_every_steps": 7, "iterand_rate": 0.3})
    assert (cfg.iterand_every_steps, cfg.iterand_every_epochs, cfg.iterand_rate) == (7, None, 0.3)


@pytest.mark.parametrize("source, overrides, expected", [
    # F' = max(1, round(F * E / E_paper)), E0' = round(E0 * E / E_paper); E_paper 250, ResNet-18 Biprop+IWR 200
    ("conv4", {"method": "edge-popup+iwr"}, (3, 0, 250)),
    ("conv4", {"method": "edge-popup+iwr", "epochs": 125}, (2, 0, 125)),     # 3 * 0.5 = 1.5 -> 2
    ("conv4", {"method": "biprop+iwr", "epochs": 4}, (1, 0, 4)),             # 10 * 0.016 -> 0 -> 1
    ("conv6", {"method": "edge-popup+iwr", "epochs": 100}, (4, 0, 100)),     # 10 * 0.4
    ("resnet18", {"method": "biprop+iwr"}, (10, 50, 200)),
    ("resnet18", {"method": "biprop+iwr", "epochs": 10}, (1, 2, 10)),        # 10 * 0.05 -> 1; 50 * 0.05 = 2.5 -> 2
    ("resnet18", {"method": "biprop+iwr", "epochs": 100}, (5, 25, 100)),
    ("resnet18", {"method": "biprop+iwr", "epochs": 100, "iwr_warmup": 7, "iwr_every": 3}, (3, 7, 100)),
    ("conv4", {"method": "biprop+iwr", "epochs": 10, "iwr_every_fraction": 0.5}, (5, 0, 10)),
])
def test_preset_periods_scale_with_the_run(source, overrides, expected):
    cfg = make_config(source, overrides)
    assert (cfg.iwr_every, cfg.iwr_warmup, cfg.epochs) == expected


# --------------------------------------------------------------------------------------------------------------
# errors list what is allowed and suggest the nearest name


@pytest.mark.parametrize("overrides, suggestion", [
    ({"method": "biprop+iw"}, "did you mean 'biprop+iwr'?"),
    ({"method": "edgepopup"}, "did you mean 'edge-popup'?"),
    ({"model": "resnet19"}, "did you mean 'resnet18'?"),
    ({"prune_rte": 0.5}, "did you mean 'prune_rate'?"),
    ({"dataset": "cifar1"}, "did you mean 'cifar10'?"),
    ({"weight_init": "kaiming_normal"}, "did you mean 'kaiming-normal'?"),
])
def test_unknown_names_suggest_the_nearest(overrides, suggestion):
    with pytest.raises(ConfigError) as e:
        make_config("digits", overrides)
    assert suggestion in str(e.value) and "\n" not in str(e.value)


def test_unknown_method_lists_every_accepted_name():
    with pytest.raises(ConfigError) as e:
        make_config("digits", {"method": "popup"})
    for name in ("edge-popup", "biprop", "dense", "edge-popup+iwr", "biprop+iwr", "iterand"):
        assert name in str(e.value)


def test_unknown_config_name_suggests():
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        make_config("digit")


def test_help_shows_the_effective_defaults():
    from supermask.run.config import Config, config_help

    help_lines = {line.split()[0]: line for line in config_help().splitlines()}
    cfg = Config()
    for key in ("skip_layers", "skip_params", "logger"):
        assert getattr(cfg, key) == [] and help_lines[key].endswith("[default: []]"), help_lines[key]
    assert cfg.include_params == [] and "default: every weight" in help_lines["include_params"]
    assert help_lines["model"].endswith(f"[default: {cfg.model}]")


def test_biprop_grad_defaults_to_the_published_gradient_and_only_biprop_takes_it():
    assert make_config(None, {"method": "biprop"}).biprop_grad == "weight"
    assert make_config(None, {"method": "biprop+iwr", "biprop_grad": "alpha"}).biprop_grad == "alpha"
    assert make_config(None, {"method": "edge-popup"}).biprop_grad is None
    with pytest.raises(ConfigError, match="biprop_grad='alpha' applies only to method=biprop"):
        make_config(None, {"method": "edge-popup", "biprop_grad": "alpha"})
    with pytest.raises(ConfigError, match="biprop_grad"):
        make_config(None, {"method": "biprop", "biprop_grad": "sign"})


def test_a_biprop_run_recorded_before_biprop_grad_reads_as_the_alpha_gradient(tmp_path):
    from supermask.run.config import dump_yaml, recorded_config

    old = make_config(None, {"method": "biprop"}).to_dict()
    del old["biprop_grad"]  # what a run made before the key existed recorded
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert recorded_config(str(tmp_path / "config.yaml")).biprop_grad == "alpha"
    assert make_config(str(tmp_path / "config.yaml")).biprop_grad == "weight"  # a user's YAML takes today's default
    new = make_config(None, {"method": "biprop"})
    (tmp_path / "config.yaml").write_text(dump_yaml(new))
    assert recorded_config(str(tmp_path / "config.yaml")).biprop_grad == "weight"
    ep = make_config(None, {"method": "edge-popup"}).to_dict()
    del ep["biprop_grad"]
    assert recorded_config(ep).biprop_grad is None


def test_scale_fan_by_is_a_choice_and_refuses_a_zero_fan():
    assert make_config(None, {"method": "biprop"}).scale_fan_by == "kept"
    assert make_config(None, {"method": "biprop", "scale_fan_by": "pruned", "prune_rate": 0.9}).scale_fan_by == "pruned"
    with pytest.raises(ConfigError, match="scale_fan_by"):
        make_config(None, {"scale_fan_by": "removed"})
    with pytest.raises(ConfigError, match="prune_rate=0"):
        make_config(None, {"method": "biprop", "scale_fan_by": "pruned", "prune_rate": 0.0})


def test_the_recipes_are_the_papers_settings_per_model():
    from supermask.run.recipes import paper_epochs, paper_schedule

    # paper-notes: EP+IWR F 3, r 0.1 (Conv-6 and ResNet-18: F 10, r 0.2); Biprop+IWR F 10, r 0.2, ResNet-18 warm-up 50
    # and 200 epochs, ResNet-50 warm-up 40 and 150; IteRand every 300 iterations (1000 on ImageNet), r 0.1
    assert paper_schedule("edge-popup+iwr", "conv4") == {"method": "edge-popup", "iwr_every": 3, "iwr_rate": 0.1}
    assert paper_schedule("edge-popup+iwr", "conv6")["iwr_every"] == 10 == paper_schedule("edge-popup+iwr", "resnet18")["iwr_every"]
    assert paper_schedule("biprop+iwr", "resnet18") == {"method": "biprop", "iwr_every": 10, "iwr_rate": 0.2,
                                                        "iwr_warmup": 50, "epochs": 200}
    assert paper_schedule("biprop+iwr", "resnet50")["epochs"] == 150
    assert paper_schedule("iterand", "vit")["iterand_every_steps"] == 300
    assert paper_schedule("iterand", "resnet50")["iterand_every_steps"] == 1000
    assert (paper_epochs("conv4"), paper_epochs("conv4", masked=False), paper_epochs("resnet50")) == (250, 100, 100)
    paper_schedule("edge-popup+iwr", "conv6")["iwr_every"] = 1  # a copy: the table stays as published
    assert paper_schedule("edge-popup+iwr", "conv6")["iwr_every"] == 10
