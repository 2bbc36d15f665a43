"""Epochs sized by the measured speed: the scale's arithmetic, the probe saved once per dataset
and reused (a resumed run keeps its recipe), and the train command's rules for when to probe."""

from __future__ import annotations

import argparse
import json

import pytest

from src.commands import train as train_command
from src.engine import speed_probe
from src.engine.config import load_config

BASE = "baseline_inception_v3"


@pytest.mark.parametrize("measured, scale", [(77, 1.0), (62, 0.80), (61.9, 0.80), (20, 0.5), (400, 1.6)])
def test_scale_is_the_speed_ratio_rounded_down_and_clamped(measured, scale):
    assert speed_probe.epoch_scale(measured, 77, [0.5, 1.6]) == scale


def test_probe_measures_a_positive_speed_alone_and_two_at_once():
    assert speed_probe.probe_images_per_s(None, seconds=0.05, rounds=1) > 0
    assert speed_probe.probe_in_parallel(None, jobs=2, seconds=0.05) > 0


def test_probe_is_saved_once_per_dataset_and_reused(tmp_path, monkeypatch):
    cfg = load_config(BASE, "cpu", ["train.sized_for_images_per_s=77"])
    monkeypatch.setattr(speed_probe, "probe_images_per_s", lambda amp_dtype, seconds=2.0: 50.0)
    assert speed_probe.probed_epoch_scale(cfg, tmp_path, "cpu") == 0.64
    saved = json.loads((tmp_path / "speed_probe-cpu.json").read_text())
    assert saved["images_per_s"] == 50.0 and saved["epoch_scale"] == 0.64

    def no_second_probe(amp_dtype, seconds=2.0):
        raise AssertionError("the saved probe must be reused")

    monkeypatch.setattr(speed_probe, "probe_images_per_s", no_second_probe)
    assert speed_probe.probed_epoch_scale(cfg, tmp_path, "cpu") == 0.64
    # a damaged file is measured again, not an error
    (tmp_path / "speed_probe-cpu.json").write_text("{not json")
    monkeypatch.setattr(speed_probe, "probe_images_per_s", lambda amp_dtype, seconds=2.0: 77.0)
    assert speed_probe.probed_epoch_scale(cfg, tmp_path, "cpu") == 1.0
    # a profile sized anew (another sized-for speed) measures again
    monkeypatch.setattr(speed_probe, "probe_images_per_s", lambda amp_dtype, seconds=2.0: 100.0)
    resized = load_config(BASE, "cpu", ["train.sized_for_images_per_s=100"])  # 100/100
    assert speed_probe.probed_epoch_scale(resized, tmp_path, "cpu") == 1.0


def test_profiles_without_a_sized_for_speed_are_never_probed(tmp_path):
    assert speed_probe.probed_epoch_scale(load_config(BASE, "full"), tmp_path, "cpu") is None
    assert not list(tmp_path.iterdir())


def test_train_command_probes_unless_the_epochs_are_given(tmp_path, monkeypatch):
    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path))
    monkeypatch.setattr(speed_probe, "probe_images_per_s", lambda amp_dtype, seconds=2.0: 38.5)
    args = argparse.Namespace(input=str(tmp_path / "data"), device="cpu", jobs=1)
    cfg = load_config(BASE, "cpu", ["train.sized_for_images_per_s=77"])
    assert train_command.speed_probe_scale(args, [], cfg) == 0.5
    for given in (["train.epochs=3"], ["train.epoch_scale=1"]):
        assert train_command.speed_probe_scale(args, given, cfg) is None
