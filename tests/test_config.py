from pathlib import Path

import pytest
import yaml

from s2mts2.config import (
    PRESET_DIR,
    DataConfig,
    LabelledDraw,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
)
from s2mts2.errors import ConfigError


def test_defaults_are_the_released_settings():
    cfg = RunConfig()
    assert cfg.pretrain.temperature == 0.07
    assert cfg.pretrain.ema == 0.999 and cfg.finetune.ema == 0.999
    assert cfg.pretrain.queue_size == 65536 and cfg.pretrain.lam_max == 2.0
    assert (cfg.pretrain.lr, cfg.pretrain.momentum, cfg.pretrain.weight_decay) == (0.03, 0.9, 1e-4)
    fc = cfg.finetune
    assert (fc.lr, fc.consistency_ramp_epochs, fc.batch_size) == (1e-4, 10.0, 32)


def test_dotted_and_stage_relative_overrides():
    cfg = load_config(None, ["pretrain.epochs=3", "seed=7", "data.size=48"])
    assert (cfg.pretrain.epochs, cfg.seed, cfg.data.size) == (3, 7, 48)
    cfg = load_config(None, ["epochs=2"], stage="pretrain")
    assert cfg.pretrain.epochs == 2 and cfg.finetune.epochs == RunConfig().finetune.epochs
    cfg = load_config(None, ["epochs=5", "method=supervised"], stage="finetune")
    assert cfg.finetune.epochs == 5 and cfg.finetune.method == "supervised"
    cfg = load_config(None, ["augment.hue=0", "augment.vflip_p=0.5"], stage="pretrain")
    assert (cfg.pretrain.augment.hue, cfg.pretrain.augment.vflip_p) == (0.0, 0.5)
    assert cfg.finetune.augment.hue is None


def test_int_accepted_for_float_and_nested_sections():
    cfg = load_config(None, ["pretrain.lr=1", "pretrain.augment.crop_scale_min=0.5"])
    assert cfg.pretrain.lr == 1.0 and isinstance(cfg.pretrain.lr, float)
    assert cfg.pretrain.augment.crop_scale_min == 0.5


def test_a_stage_relative_typo_is_reported_among_the_stage_keys():
    with pytest.raises(ConfigError, match=r"'finetune.epoch' \(did you mean 'finetune.epochs'"):
        load_config(None, ["epoch=2"], stage="finetune")
    with pytest.raises(ConfigError, match=r"'sed' \(did you mean 'seed'\?\); valid keys here"):
        load_config(None, ["sed=2"], stage="finetune")
    with pytest.raises(ConfigError, match=r"'pretrain.qwerty'; valid keys here: augment, "):
        load_config(None, ["qwerty=2"], stage="pretrain")


def test_scientific_notation_is_a_float_on_the_command_line_and_in_yaml(tmp_path: Path):
    (tmp_path / "sci.yaml").write_text("finetune:\n  lr: 1e-3\npretrain:\n  lr: +2.5E+1\n")
    cfg = load_config(tmp_path / "sci.yaml", ["pretrain.weight_decay=5e-5"])
    assert (cfg.finetune.lr, cfg.pretrain.lr, cfg.pretrain.weight_decay) == (1e-3, 25.0, 5e-5)
    with pytest.raises(ConfigError, match="finetune.epochs.*integer"):
        load_config(None, ["finetune.epochs=1e3"])
    with pytest.raises(ConfigError, match="expected a float, got '1e'"):
        load_config(None, ["finetune.lr=1e"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("pretrain.epoch=3", ["pretrain.epoch", "did you mean 'pretrain.epochs'"]),
        ("pretrain.epochs=three", ["pretrain.epochs", "integer"]),
        ("pretrain.loss=simclr", ["pretrain.loss", "jcl"]),
        ("finetune.independent_views=1", ["finetune.independent_views", "true/false"]),
        ("pretrain=3", ["pretrain", "section"]),
        ("novalue", ["key=value"]),
        ("pretrain.lr=true", ["pretrain.lr", "float"]),
        ("pretrain.epochs=true", ["pretrain.epochs", "integer"]),
        ("finetune.lr=1e-3x", ["finetune.lr", "float"]),
        ("pretrain.augment.hue_p=0.1", ["'pretrain.augment.hue_p'", "'pretrain.augment.hue'"]),
    ],
)
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("pretrain.temperature=0", "> 0"),
        ("pretrain.lr=-1", "> 0"),
        ("pretrain.queue_size=0", "≥ 1"),
        ("pretrain.epochs=-1", "≥ 1"),
        ("pretrain.batch_size=1", "≥ 2"),
        ("finetune.epochs=0", "≥ 1"),
        ("finetune.steps_per_epoch=-1", "≥ 0"),
        ("finetune.unlabelled_ratio=0", "> 0"),
        ("finetune.ema=1.5", r"in \[0, 1\]"),
        ("finetune.consistency=-2", "≥ 0"),
        ("finetune.momentum=1", r"in \[0, 0.9999\]"),
        ("threads=-3", "≥ 0"),
        ("data.labelled=0", r"in \(0, 1\]"),
        ("finetune.augment.hflip_p=1.5", r"in \[0, 1\]"),
        ("pretrain.augment.hue=0.6", r"in \[0, 0.5\]"),
        ("data.size=4", "≥ 8"),
        ("data.cache_size=4", "0 or ≥ 8"),
        ("finetune.size=-1", "0 or ≥ 8"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(override, expected):
    key, value = override.split("=")
    with pytest.raises(
        ConfigError, match=f"'{key}': {value}(.0)? is out of range; expected {expected}$"
    ):
        load_config(None, [override])


def test_range_bounds_are_allowed_and_a_yaml_value_names_its_file(tmp_path: Path):
    edges = ["pretrain.ema=1", "pretrain.ema=0", "data.labelled=1", "threads=0"]
    cfg = load_config(None, [*edges, "pretrain.augment.hue=0.5", "finetune.consistency=0"])
    assert (cfg.pretrain.ema, cfg.data.labelled, cfg.pretrain.augment.hue) == (0.0, 1.0, 0.5)
    assert load_config(None, ["pretrain.augment.hue=null"]).pretrain.augment.hue is None
    (tmp_path / "bad.yaml").write_text("pretrain:\n  temperature: 0.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: config key 'pretrain.temperature'"):
        load_config(tmp_path / "bad.yaml")


def test_text_keys_take_the_value_as_typed():
    cfg = load_config(None, ["data.dir=2024", "model.weights=", "finetune.pretrained=0012"])
    assert (cfg.data.dir, cfg.model.weights, cfg.finetune.pretrained) == ("2024", "", "0012")
    cfg = load_config(None, ["data.dir=/data/run=2", "finetune.pretrained='/a b/last.pt'"])
    assert (cfg.data.dir, cfg.finetune.pretrained) == ("/data/run=2", "/a b/last.pt")


def test_a_stage_key_resembling_a_top_level_key_stays_in_the_stage():
    cfg = load_config(None, ["pretrained=/x/last.pt"], stage="finetune")
    assert cfg.finetune.pretrained == "/x/last.pt"


def test_yaml_file_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml.*epochz"):
        load_config(bad)
    bad.write_text("data:\n  dir: 2024\n")
    with pytest.raises(ConfigError, match="bad.yaml.*'data.dir': expected text.*quote it"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="built-in presets"):
        load_config("no-such-preset")


def test_a_count_of_one_replaces_the_fraction():
    assert DataConfig(labelled_count=1, split_seed=2).labelled_draw() == LabelledDraw(
        count=1, seed=2
    )
    assert DataConfig(labelled=0.3).labelled_draw() == LabelledDraw(fraction=0.3)


def test_round_trip_and_parse_override():
    cfg = load_config(None, ["finetune.method=mean-teacher"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


def test_a_retired_key_is_refused_with_its_reason_but_read_from_a_stored_config(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"'model.shared_bn_stats' was removed: .*slower"):
        load_config(None, ["model.shared_bn_stats=true"])
    (tmp_path / "c.yaml").write_text("model:\n  shared_bn_stats: true\n")
    with pytest.raises(
        ConfigError, match=r"c.yaml: config key 'model.shared_bn_stats' was removed"
    ):
        load_config(tmp_path / "c.yaml")
    # the config.yaml an earlier run wrote holds the value that asks for today's behaviour
    (tmp_path / "c.yaml").write_text("model:\n  shared_bn_stats: false\n")
    assert load_config(tmp_path / "c.yaml") == load_config(None)
    assert load_config(None, ["model.shared_bn_stats=false"]) == load_config(None)
    stored = config_to_dict(load_config("tiny"))  # a checkpoint's config from before the removal
    stored["model"]["shared_bn_stats"] = True
    assert config_from_dict(stored) == load_config("tiny")
    stored["model"]["sync_bnn"] = False  # anything else unknown is still an error
    with pytest.raises(ConfigError, match="unknown config key 'model.sync_bnn'"):
        config_from_dict(stored)


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, RunConfig)
    raw = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    assert raw, "presets are not empty"


def test_presets_exist():
    names = {p.stem for p in PRESET_DIR.glob("*.yaml")}
    assert {
        "demo",
        "ham10000-cpu",
        "isic2018-paper",
        "chestxray14-paper",
        "chexpert-paper",
    } <= names


def test_stage_sizes_default_to_data_size_and_a_cache_is_never_below_its_training_size():
    cfg = load_config(None, ["data.size=32"])
    assert (cfg.finetune_size(), cfg.data.cache_for(cfg.finetune_size())) == (32, 32)
    cfg = load_config(None, ["data.size=32", "finetune.size=24", "data.cache_size=48"])
    assert (cfg.finetune_size(), cfg.data.cache_for(24), cfg.data.cache_for(32)) == (24, 48, 48)
    with pytest.raises(ConfigError, match="'data.cache_size': 16 px is below the stage-2 training"):
        load_config(None, ["data.size=32", "data.cache_size=16"])
    with pytest.raises(ConfigError, match="'data.cache_size': 32 px is below .* 48 px"):
        load_config(None, ["data.size=16", "finetune.size=48", "data.cache_size=32"])


def test_stage1_reads_a_larger_cache_and_refuses_a_smaller_one():
    larger = ["data.size=32", "data.cache_size=48"]
    assert load_config(None, larger, stage="pretrain").data.cache_for(32) == 48
    with pytest.raises(ConfigError, match="'data.cache_size': 24 px is below the stage-1"):
        load_config(
            None, ["data.size=32", "finetune.size=16", "data.cache_size=24"], stage="pretrain"
        )
    assert load_config(None, ["data.size=32", "data.cache_size=32"], stage="pretrain")


PAPER_SIZES = {  # preset: (stage-1 size, stage-2 size, stage-2 cache size), docs/method.md
    "chestxray14-paper": (256, 512, 512),  # stage 1 crops from the 512 px cache too
    "chexpert-paper": (256, 224, 256),
    "isic2018-paper": (256, 224, 256),
}


@pytest.mark.parametrize("preset", sorted(PAPER_SIZES))
def test_paper_presets_hold_the_released_settings(preset):
    cfg = load_config(preset, stage="pretrain")  # stage 1 accepts them too
    fc = cfg.finetune
    sizes = (cfg.data.size, cfg.finetune_size(), cfg.data.cache_for(cfg.finetune_size()))
    assert sizes == PAPER_SIZES[preset]
    assert fc.independent_views is False  # one weak view for student and teacher
    assert (fc.consistency_ramp, fc.consistency_ramp_epochs) == ("linear", fc.epochs)
    assert fc.augment_preset == "weak" and fc.augment.crop_scale_min == 0.2
    assert (cfg.model.backbone, cfg.model.init, cfg.pretrain.loss) == (
        "densenet121",
        "imagenet",
        "jcl",
    )
    header = (PRESET_DIR / f"{preset}.yaml").read_text().split("\nseed:")[0]
    for px in {*sizes[:2]}:
        assert f"{px} px" in header  # the comments name the sizes the preset trains at
    assert "224 px" not in header or sizes[1] == 224


def test_other_presets_keep_independent_views():
    others = sorted({p.stem for p in PRESET_DIR.glob("*.yaml")} - set(PAPER_SIZES))
    assert others and all(load_config(name).finetune.independent_views for name in others)


def _old_keys(values: dict) -> dict:
    """``values`` (a config dict) as an earlier version named its stage-2 augmentation keys."""
    fc = dict(values["finetune"])
    fc["augment"], fc["augment_overrides"] = fc.pop("augment_preset"), fc.pop("augment")
    return {**values, "finetune": fc}


def test_renamed_keys_load_as_the_new_ones_and_name_them(tmp_path: Path, caplog):
    new = load_config(None, ["finetune.augment_preset=strong", "finetune.augment.hue=0.1"])
    (tmp_path / "old.yaml").write_text(
        "finetune:\n  augment: strong\n  augment_overrides:\n    hue: 0.1\n"
    )
    with caplog.at_level("WARNING", logger="s2mts2"):
        assert load_config(tmp_path / "old.yaml") == new
    assert caplog.messages == [
        "config: finetune.augment is now finetune.augment_preset",
        "config: finetune.augment_overrides is now finetune.augment",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="s2mts2"):
        old_set = ["finetune.augment=strong", "finetune.augment_overrides.hue=0.1"]
        assert load_config(None, old_set) == new
        assert load_config(None, ["augment=strong", "augment_overrides.hue=0.1"], "finetune") == new
    assert caplog.messages[:2] == [
        "config: finetune.augment is now finetune.augment_preset",
        "config: finetune.augment_overrides is now finetune.augment",
    ]
    assert config_from_dict(_old_keys(config_to_dict(new))) == new  # a stored config


def test_a_saved_config_uses_the_new_keys():
    fc = config_to_dict(load_config("isic2018-paper"))["finetune"]
    assert fc["augment_preset"] == "weak" and fc["augment"]["crop_scale_min"] == 0.2
    assert "augment_overrides" not in fc


def test_the_knn_temperature_is_a_setting():
    assert RunConfig().pretrain.knn_temperature == 0.07
    assert load_config(None, ["pretrain.knn_temperature=0.1"]).pretrain.knn_temperature == 0.1
    with pytest.raises(ConfigError, match="knn_temperature"):
        load_config(None, ["pretrain.knn_temperature=0"])
