"""Config validation: a bad value is a one-line UserError naming the key, the value and the
expected type, raised by load_config before any work (and before the input is looked at)."""

from __future__ import annotations

import pytest
import timm
import torch
import yaml

from src.cli import main as cli_main
from src.engine import config as config_module
from src.engine.config import CONFIG_DIR, config_fingerprint, load_config, validate_config
from src.models import build_model, create_backbone
from src.utils.errors import UserError

BASE = "baseline_inception_v3"


@pytest.mark.parametrize("override, message", [
    ("train.epochs=abc", "train.epochs='abc': expected an integer"),
    ("train.epochs=", "train.epochs has no value"),
    ("train.epochs=2.5", "train.epochs=2.5: expected an integer"),
    ("train.epochs=true", "train.epochs=True: expected an integer"),  # a bool is not an int
    ("train.epochs=0", "train.epochs=0: expected an integer >= 1"),
    ("data.size=abc", "data.size='abc': expected an integer"),
    ("data.size=16", "data.size=16: expected an integer >= 32"),
    ("data.channels=2", "data.channels=2: expected 1 or 3"),
    ("train.batch_size=0", "train.batch_size=0: expected an integer >= 1"),
    ("optim.lr=0", "optim.lr=0: expected a number > 0"),
    ("optim.lr=fast", "optim.lr='fast': expected a number"),
    ("aug.p_blur=1.5", "aug.p_blur=1.5: expected a number in [0, 1]"),
    ("train.ema=1", "train.ema=1: expected true or false"),
    ("train.amp_dtype=fp8", "train.amp_dtype='fp8': expected one of bfloat16, float16, none"),
    ("train.grad_clip=abc", "train.grad_clip='abc': expected null or a number > 0"),
    ("data.cache_workers=0", "data.cache_workers=0: expected null or an integer >= 1"),
    ("model.pretrained_file=3", "model.pretrained_file=3: expected null or a file path"),
    ("model.head_hidden=[64, x]", "model.head_hidden=[64, 'x']: expected a list of integers"),
    ("tta=[]", "tta=[]: expected a non-empty list of mappings"),
    ("tta=[identity]", "tta=['identity']: expected a non-empty list of mappings"),
    ("data.preprocess=[3]", "data.preprocess=[3]: expected a non-empty list of step names or mappings"),
    ("name=../elsewhere", "name='../elsewhere': expected a name"),
    ("data=3", "data=3: expected a mapping"),
])
def test_bad_values_name_key_value_and_type(override, message):
    with pytest.raises(UserError) as info:
        load_config(BASE, None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override, key, value", [
    ("optim.lr=3e-4", ("optim", "lr"), 3e-4),  # YAML 1.1 would read '3e-4' as a string
    ("optim.lr=1", ("optim", "lr"), 1),  # a float key accepts an int
    ("train.grad_clip=1.0", ("train", "grad_clip"), 1.0),
    ("train.grad_clip=", ("train", "grad_clip"), None),  # null default: empty is fine
    ("model.pretrained_file=w.pth", ("model", "pretrained_file"), "w.pth"),
    ("data.cache_workers=2", ("data", "cache_workers"), 2),
    ("aug.rotate=[-5, 10]", ("aug", "rotate"), [-5, 10]),
    ("aug.scale=0.1", ("aug", "scale"), 0.1),
    ("data.preprocess=[resize]", ("data", "preprocess"), ["resize"]),
    ("train.amp_dtype=none", ("train", "amp_dtype"), "none"),
])
def test_good_values_pass(override, key, value):
    cfg = load_config(BASE, None, [override])
    assert cfg[key[0]][key[1]] == value


@pytest.mark.parametrize("profile", [None, "demo", "cpu", "full"])
def test_shipped_configs_and_profiles_are_valid(profile):
    load_config(BASE, profile)


def test_cpu_profile_is_sized_by_the_speed_probe():
    """The cpu profile states the probe speed its epochs were sized on; a scale (the probe's, or
    given by hand) trains floor(epochs x scale) epochs, applied once: the resolved config keeps
    the written epochs beside them and a scale of 1, so resolving it again changes nothing."""
    cfg = load_config(BASE, "cpu")
    written = cfg["train"]["epochs"]
    assert written == 15 and cfg["train"]["batch_size"] == 32  # the baseline: half the profile's 30
    assert cfg["train"]["sized_for_images_per_s"] > 0 and cfg["train"]["epochs_as_written"] is None
    scaled = load_config(BASE, "cpu", ["train.epoch_scale=0.8"])
    assert scaled["train"]["epochs"] == 12 and scaled["train"]["epochs_as_written"] == written
    assert scaled["train"]["epoch_scale"] == 1.0
    assert load_config(BASE, "cpu", ["train.epoch_scale=0.01"])["train"]["epochs"] == 1  # never 0
    # the fingerprint holds what trains (the epochs), not how they were arrived at
    assert config_fingerprint(scaled) == config_fingerprint(load_config(BASE, "cpu", ["train.epochs=12"]))
    assert config_fingerprint(scaled) != config_fingerprint(cfg)
    family = load_config("resnet_regression_clahe_lowres", "cpu", ["train.epoch_scale=0.8"])
    assert family["train"]["epochs_as_written"] == 30 and family["train"]["epochs"] == 24


def test_cpu_stand_ins_are_half_width_resnet10t():
    """The cpu profile's stand-ins: resnet10t at channels 32-256 and a 16-wide stem, which a timm
    constructor takes through model.backbone_kwargs (built here: a wrong keyword would fail at the
    first fold)."""
    for name in ("baseline_inception_v3", "resnet_classification_clahe_lowres", "resnet_classification_region_a"):
        model = load_config(name, "cpu")["model"]
        assert model["backbone"] == "resnet10t"
        assert model["backbone_kwargs"] == {"channels": [32, 64, 128, 256], "stem_width": 16}
    net, _ = build_model({**model, "pretrained": False}, in_chans=1, out_dim=1)
    assert net.backbone.num_features == 256


def test_backbone_kwargs_errors_name_the_key():
    with pytest.raises(UserError, match="model.backbone_kwargs .*resnet10t does not take them"):
        create_backbone("resnet10t", 1, False, None, backbone_kwargs={"widths": [1]})
    with pytest.raises(UserError, match="model.backbone_kwargs sets in_chans"):
        create_backbone("resnet10t", 1, False, None, backbone_kwargs={"in_chans": 3})
    with pytest.raises(UserError, match="only timm backbones take them, not m46"):
        create_backbone("m46", 1, False, None, backbone_kwargs={"channels": [1]})
    with pytest.raises(UserError, match="model.backbone_kwargs=.*expected a mapping"):
        load_config(BASE, "cpu", ["model.backbone_kwargs=[32, 64]"])


def test_full_width_weights_do_not_fit_the_half_width_stand_in(tmp_path):
    """ImageNet weights for resnet10t (--pretrained-file) on the cpu profile's half-width model:
    an error that says so and how to get the standard model, not a bare size mismatch."""
    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=0, in_chans=1).state_dict(), weights)
    fix = r"backbone_kwargs=\{\} for the standard model"
    with pytest.raises(UserError, match=r"does not fit resnet10t with model.backbone_kwargs .*" + fix):
        create_backbone("resnet10t", 1, True, str(weights), backbone_kwargs={"channels": [32, 64, 128, 256]})
    model, origin = create_backbone("resnet10t", 1, True, str(weights))
    assert origin == f"file:{weights}"


def test_unknown_keys_are_still_errors():
    with pytest.raises(UserError, match="unknown key 'train.epoch'"):
        load_config(BASE, None, ["train.epoch=3"])


def test_types_come_from_defaults_yaml_so_new_keys_need_no_code(tmp_path, monkeypatch):
    defaults = yaml.safe_load((CONFIG_DIR / "defaults.yaml").read_text())
    defaults["train"].update(new_flag=True, new_count=4, new_name="x", new_ratio=0.5, new_optional=None)
    (tmp_path / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    (tmp_path / f"{BASE}.yaml").write_text((CONFIG_DIR / f"{BASE}.yaml").read_text())
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(config_module, "find_config", lambda name, directory=tmp_path: tmp_path / f"{name}.yaml")
    cfg = load_config(BASE, None, ["train.new_count=7", "train.new_ratio=1", "train.new_optional=[1, 2]"])
    assert cfg["train"]["new_count"] == 7
    for override, expected in [("train.new_flag=maybe", "true or false"), ("train.new_count=4.5", "an integer"),
                               ("train.new_name=[1]", "a string"), ("train.new_ratio=abc", "a number"),
                               ("train.new_count=", "has no value"), ("train.new_optional={a: 1}", "null")]:
        with pytest.raises(UserError, match=expected):
            load_config(BASE, None, [override])


def test_known_choices_when_defaults_have_them():
    cfg = load_config(BASE)
    for key, bad in [("predict_from", "worst"), ("amp_dtype", "fp8")]:
        broken = {**cfg, "train": {**cfg["train"], key: bad}}
        if key in cfg["train"]:
            with pytest.raises(UserError, match=f"train.{key}='{bad}'"):
                validate_config(broken)
    if "limit" in cfg["data"]:
        with pytest.raises(UserError, match="data.limit=0: expected null or an integer >= 1"):
            load_config(BASE, None, ["data.limit=0"])


def test_cli_rejects_a_bad_override_with_one_line_and_exit_2(tmp_path, capsys):
    code = cli_main(["train", "--config", BASE, "--input", str(tmp_path / "nonexistent"), "train.epochs=abc"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "error: train.epochs='abc': expected an integer >= 1"
    assert "Traceback" not in err and "nonexistent" not in err  # rejected before the input is looked at
