"""The paper's model family: the m46 backbone through BoneAgeNet, the 240-bin classification
codec, and the experiment configs. Every test is tiny (CPU, batch 2, <= 160 px)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import yaml
import torch
from torch import nn

from src.engine.config import load_config
from src.models import M46, PROJECT_BACKBONES, BoneAgeNet, build_model, build_target, create_backbone
from src.models.targets import ClassificationTarget, RegressionTarget
from src.utils.errors import UserError

MALE = torch.tensor([[1.0], [0.0]])


def _m46_cfg(**extra) -> dict:
    return {"backbone": "m46", "pretrained": False, "pretrained_file": None, "head_hidden": [32], **extra}


# --- m46 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("out_dim", [1, 240])
def test_m46_output_shape_at_three_sizes(in_chans, out_dim):
    torch.manual_seed(0)
    net, source = build_model(_m46_cfg(), in_chans=in_chans, out_dim=out_dim)
    assert source == "scratch"
    net.eval()
    for size in (64, 96, 160):
        out = net(torch.randn(2, in_chans, size, size), MALE)
        assert out.shape == (2, out_dim) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_m46_backbone_structure_and_any_size():
    m = M46(in_chans=1)
    assert m.num_features == 384
    assert [b[0].out_channels for b in m.blocks] == [32, 64, 128, 128, 256, 384]
    block = m.blocks[0]
    kinds = [type(layer) for layer in block]
    assert kinds == [nn.Conv2d, nn.ELU, nn.BatchNorm2d, nn.Conv2d, nn.ELU, nn.BatchNorm2d, nn.MaxPool2d]
    assert block[0].kernel_size == (3, 3) and block[3].kernel_size == (1, 1)
    assert block[6].kernel_size == 3 and block[6].stride == 2
    m.eval()
    for size in (32, 33, 47):  # odd and minimal sizes still pool down to a feature vector
        assert m(torch.randn(1, 1, size, size)).shape == (1, 384)
    assert m.forward_features(torch.randn(1, 1, 64, 64)).shape == (1, 384, 1, 1)


def test_paper_head_is_elu_for_m46_and_relu_for_timm():
    net, _ = build_model(_m46_cfg(head_hidden=[2048, 2048], head_dropout=0.25, drop_rate=0.25), 1, 240)
    kinds = [type(layer) for layer in net.head]
    assert kinds == [nn.Linear, nn.ELU, nn.Dropout, nn.Linear, nn.ELU, nn.Dropout, nn.Linear]
    assert net.head[0].in_features == 384 + 32 and net.head[0].out_features == 2048
    assert net.head[-1].out_features == 240
    assert isinstance(net.backbone.drop, nn.Dropout) and net.backbone.drop.p == 0.25
    timm_net, _ = build_model({"backbone": "test_resnet", "pretrained": False, "head_hidden": [16]}, 1, 1)
    assert [type(layer) for layer in timm_net.head] == [nn.Linear, nn.ReLU, nn.Linear]
    with pytest.raises(ValueError, match="activation"):
        BoneAgeNet(M46(), activation="gelu")


def test_m46_is_a_project_backbone_and_pretrained_means_scratch(caplog):
    assert "m46" in PROJECT_BACKBONES
    with caplog.at_level(logging.INFO, logger="src.models.boneage_net"):
        model, source = create_backbone("m46", in_chans=1, pretrained=True, pretrained_file=None)
    assert isinstance(model, M46) and source == "scratch"
    assert any("from scratch" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    with pytest.raises(UserError, match="unknown backbone"):
        create_backbone("no_such_net_46", 1, False, None)


def test_m46_pretrained_file_round_trip(tmp_path):
    torch.manual_seed(1)
    src = M46(in_chans=1)
    plain = tmp_path / "m46.pth"
    torch.save(src.state_dict(), plain)
    loaded, source = create_backbone("m46", 1, False, str(plain))
    assert source == f"file:{plain}"
    for key, value in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    # a whole BoneAgeNet state_dict (or a checkpoint holding one under "model") gives its backbone
    net = BoneAgeNet(src, out_dim=1, head_hidden=[8])
    whole = tmp_path / "net.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, whole)
    from_net, _ = create_backbone("m46", 1, False, str(whole))
    assert torch.equal(from_net.blocks[5][0].weight, src.blocks[5][0].weight)
    # a 1-channel stem adapts to 3 channels (and back), as timm does for ImageNet weights
    rgb, _ = create_backbone("m46", 3, False, str(plain))
    assert rgb.blocks[0][0].weight.shape[1] == 3
    src.eval(), rgb.eval()
    grey = torch.rand(1, 1, 32, 32)
    assert torch.allclose(rgb(grey.expand(1, 3, 32, 32)), src(grey), atol=1e-5)
    rgb_file = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), rgb_file)
    back, _ = create_backbone("m46", 1, False, str(rgb_file))
    assert torch.allclose(back.blocks[0][0].weight, src.blocks[0][0].weight, atol=1e-6)
    with pytest.raises(UserError, match="does not hold m46 weights"):
        bad = tmp_path / "other.pth"
        torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
        create_backbone("m46", 1, False, str(bad))
    with pytest.raises(UserError, match="does not exist"):
        create_backbone("m46", 1, False, str(tmp_path / "missing.pth"))


# --- classification codec -------------------------------------------------------------------------


def _codec(**kw) -> ClassificationTarget:
    return ClassificationTarget(**kw).fit(np.array([10.0, 60.0, 120.0, 200.0]))


def test_expectation_stays_in_range_for_random_and_extreme_logits():
    codec = _codec()
    assert codec.out_dim == 240
    torch.manual_seed(0)
    for logits in (torch.randn(64, 240), 100 * torch.randn(64, 240), 1e4 * torch.randn(64, 240),
                   torch.full((2, 240), -1e30), torch.zeros(2, 240)):
        pred = codec.decode(logits)
        assert pred.shape == (logits.shape[0],) and pred.dtype == torch.float32
        assert torch.isfinite(pred).all()
        assert (pred >= 0.5 - 1e-3).all() and (pred <= 239.5 + 1e-3).all()
    assert codec.decode(torch.zeros(1, 240)).item() == pytest.approx(120.0, abs=1e-3)
    # bf16 logits (autocast) decode in fp32
    assert codec.decode(torch.randn(4, 240, dtype=torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("k", [0, 7, 120, 239])
def test_decode_of_a_peaked_logit_is_its_bin_centre(k):
    logits = torch.zeros(1, 240)
    logits[0, k] = 50.0
    assert ClassificationTarget().decode(logits).item() == pytest.approx(k + 0.5, abs=1e-3)


def test_loss_prefers_correct_logits_and_has_finite_gradient():
    codec = _codec(ce_weight=0.5, ce_sigma=2.0)
    ages = torch.tensor([12.3, 150.0])
    right = torch.zeros(2, 240)
    right[0, 12], right[1, 150] = 20.0, 20.0  # bins containing the ages
    wrong = torch.zeros(2, 240)
    wrong[0, 200], wrong[1, 20] = 20.0, 20.0
    assert codec.loss(right, ages).item() < codec.loss(wrong, ages).item()
    logits = torch.randn(2, 240, requires_grad=True)
    codec.loss(logits, ages).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_l1_term_is_in_scaled_months():
    codec = _codec()
    logits = torch.zeros(3, 240)
    ages = torch.tensor([100.0, 130.0, 120.0])
    expected = (torch.tensor([20.0, 10.0, 0.0]) / codec.scale).mean()
    assert codec.loss(logits, ages).item() == pytest.approx(expected.item(), rel=1e-4)


def test_soft_label_ce_is_finite_and_labels_are_distributions():
    for sigma in (0.01, 2.0, 50.0):
        codec = _codec(ce_weight=1.0, ce_sigma=sigma)
        ages = torch.tensor([0.0, 12.3, 239.9, 250.0, -3.0])  # ends and beyond them are clamped
        labels = codec.soft_labels(ages)
        assert labels.shape == (5, 240) and torch.isfinite(labels).all()
        assert torch.allclose(labels.sum(dim=1), torch.ones(5), atol=1e-5)
        assert labels[1].argmax().item() == 12
        loss = codec.loss(1e3 * torch.randn(5, 240), ages)
        assert torch.isfinite(loss)


@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_loss_decreases_training_a_linear_head_on_fixed_features(ce_weight):
    torch.manual_seed(0)
    features = torch.randn(64, 8)
    ages = (120 + 40 * features[:, 0]).clamp(1, 230)
    codec = ClassificationTarget(ce_weight=ce_weight).fit(ages.numpy())
    head = nn.Linear(8, codec.out_dim)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = codec.loss(head(features), ages)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    mae = (codec.decode(head(features)) - ages).abs().mean().item()
    assert mae < 40


def test_classification_state_dict_round_trip():
    codec = ClassificationTarget(ce_weight=0.3, ce_sigma=1.5).fit(np.array([5.0, 50.0, 150.0]))
    state = codec.state_dict()
    assert state["form"] == "classification" and state["bins"] == 240
    fresh = build_target({"form": "classification", "loss": "l1", "bins": 240, "ce_weight": 0.3, "ce_sigma": 1.5})
    fresh.load_state_dict(state)
    assert (fresh.mean, fresh.scale) == (codec.mean, codec.scale)
    logits = torch.randn(3, 240)
    ages = torch.tensor([10.0, 20.0, 30.0])
    assert torch.equal(fresh.decode(logits), codec.decode(logits))
    assert fresh.loss(logits, ages).item() == pytest.approx(codec.loss(logits, ages).item())
    with pytest.raises(ValueError, match="bins"):
        ClassificationTarget(bins=120).load_state_dict(state)


def test_build_target_forms_and_bad_values():
    assert isinstance(build_target({"form": "regression", "loss": "l1"}), RegressionTarget)
    # keys of the classification form are ignored by regression (defaults.yaml holds them for all)
    regression = build_target({"form": "regression", "loss": "l1", "bins": 240, "ce_weight": 0.0, "ce_sigma": 2.0})
    assert regression.out_dim == 1
    codec = build_target({"form": "classification", "loss": "l1"})
    assert isinstance(codec, ClassificationTarget) and codec.out_dim == 240 and codec.ce_weight == 0.0
    assert build_target({"form": "classification", "bins": 12}).out_dim == 12
    with pytest.raises(UserError, match="target.form"):
        build_target({"form": "ordinal"})
    with pytest.raises(UserError, match="target.loss"):
        build_target({"form": "classification", "loss": "huber"})
    for bad in ({"bins": 1}, {"bins": 2.5}, {"ce_weight": -1.0}, {"ce_sigma": 0.0}, {"ce_sigma": "2"},
                {"ce_weight": float("inf")}, {"ce_sigma": float("nan")}):
        with pytest.raises(UserError):
            build_target({"form": "classification", **bad})


# --- configs ----------------------------------------------------------------------------------------

NEW_CONFIGS = ["m46_regression", "m46_classification", "m46_regression_male", "m46_regression_female",
               "resnet_classification", "efficientnet_regression", "convnext_regression"]


def test_new_configs_load_with_distinct_names_and_known_backbones():
    cfgs = {name: load_config(name) for name in NEW_CONFIGS}
    assert len({c["name"] for c in cfgs.values()}) == len(NEW_CONFIGS)
    for name, cfg in cfgs.items():
        backbone = cfg["model"]["backbone"]
        assert backbone in PROJECT_BACKBONES or timm.is_model(backbone), name
        assert cfg["data"]["size"] >= 256, name  # GPU-sized; the cpu/demo profiles shrink it
        assert build_target(cfg["target"]).out_dim == (240 if cfg["target"]["form"] == "classification" else 1)
    assert cfgs["m46_regression_male"]["data"]["sex"] == "male"
    assert cfgs["m46_regression_female"]["data"]["sex"] == "female"
    assert cfgs["m46_classification"]["model"]["head_hidden"] == [2048, 2048]


def test_m46_classification_config_builds_a_working_model():
    cfg = load_config("m46_classification")
    codec = build_target(cfg["target"]).fit(np.array([20.0, 100.0, 180.0]))
    net, _ = build_model(cfg["model"], in_chans=int(cfg["data"]["channels"]), out_dim=codec.out_dim)
    net.eval()
    with torch.no_grad():
        pred = codec.decode(net(torch.randn(2, 1, 64, 64), MALE))
    assert pred.shape == (2,) and ((pred >= 0.5) & (pred <= 239.5)).all()


def test_m46_classification_trains_one_fold_end_to_end(tiny_phantom):
    """The engine with m46 + the 240-bin codec: one fold, one epoch, checkpoints (the codec's
    state included) reloaded to predict OOF rows within the bins' range."""
    import pandas as pd
    from helpers import audited, tiny_cfg

    from src.engine.checkpoint import load_checkpoint
    from src.engine.experiment import run_experiment

    root = audited(tiny_phantom)
    cfg = tiny_cfg("model.backbone=m46", "target.form=classification", "train.epochs=1", "data.size=48",
                   "tta=[{name: identity}]")
    out = run_experiment(cfg, root, folds=[0], device="cpu")
    state = load_checkpoint(out / "fold0" / "last.pt")
    assert state["target"]["form"] == "classification" and state["target"]["bins"] == 240
    assert state["target"]["scale"] > 0
    assert state["model"]["head.2.weight"].shape[0] == 240
    assert isinstance(state["model"], dict) and "backbone.blocks.5.0.weight" in state["model"]
    oof = pd.read_csv(out / "fold0" / "oof.csv")
    assert len(oof) > 0 and oof["pred"].between(0.5, 239.5).all()


def test_every_family_member_resolves_and_the_demo_family_covers_the_recipe():
    """families.yaml names configs that load under their profile; the demo trains m46 in both
    heads, a sex-specific pair and one registered model per region, beside the baseline."""
    families = yaml.safe_load((Path(__file__).resolve().parents[1] / "src" / "configs" / "families.yaml").read_text())
    for profile, names in families.items():
        cfgs = [load_config(name, profile) for name in names]
        assert len({c["name"] for c in cfgs}) == len(names), profile
    demo = {name: load_config(name, "demo") for name in families["demo"]}
    forms = {(c["model"]["backbone"], c["target"]["form"]) for c in demo.values() if c["data"]["sex"] == "both"}
    assert {("m46", "regression"), ("m46", "classification")} <= forms
    assert {c["data"]["sex"] for c in demo.values()} == {"both", "male", "female"}
    regions = {step.get("region") for c in demo.values() for step in c["data"]["preprocess"] if step["name"] == "region"}
    assert regions == {"A", "B", "C"}
    cpu_regions = {step.get("region") for name in families["cpu"]
                   for step in load_config(name, "cpu")["data"]["preprocess"] if step["name"] == "region"}
    assert "A" in cpu_regions and len(families["cpu"]) >= 3  # >= 4 models with the baseline
