"""Backbone + sex branch + dense head: the RSNA 2017 winner's architecture for any timm backbone.

pooled image features ----------------\
                                       concat -> dense(1000) -> dense(1000) -> output
male (0/1) -> dense(1 -> 32) -> ReLU -/
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from ..utils.errors import UserError

log = logging.getLogger(__name__)


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP probe of the Hugging Face endpoint timm downloads from (HF_ENDPOINT honoured),
    so an offline machine falls back in seconds, not after a minute of retries per model."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def create_backbone(name: str, in_chans: int, pretrained: bool, pretrained_file: str | None,
                    drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> tuple[nn.Module, str]:
    """A timm model without its classifier, and where its weights came from.

    Weights come from `pretrained_file` when given (offline machines; timm adapts the stem to
    `in_chans`), else from the hub when `pretrained` and reachable. Without either it trains
    from scratch and says so; it never fails because a hub is out of reach.
    """
    kwargs = {"num_classes": 0, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"unknown timm backbone '{name}' (see timm.list_models())")
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(f"model.pretrained_file {path} does not exist")
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        log.info("%s: pretrained weights from %s", name, path)
        return model, f"file:{path}"
    if pretrained and not _hf_offline() and not hub_reachable():
        log.warning("%s: the model hub is unreachable; training from scratch (set model.pretrained_file "
                    "or --pretrained-file to local weights, or HF_HUB_OFFLINE=1 to use the local HF cache)", name)
    elif pretrained:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
            log.info("%s: pretrained weights from the hub%s", name, " cache (HF_HUB_OFFLINE)" if _hf_offline() else "")
            return model, "hub"
        except Exception as exc:  # offline, no such weights, hub error: all mean "from scratch"
            log.warning("%s: pretrained weights unavailable (%s: %s); training from scratch",
                        name, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
    # model.pretrained false: the caller says where the weights come from (scratch or a checkpoint)
    return timm.create_model(name, pretrained=False, **kwargs), "scratch"


class BoneAgeNet(nn.Module):
    def __init__(self, backbone: nn.Module, out_dim: int = 1, sex_input: bool = True, sex_features: int = 32,
                 head_hidden: list[int] | tuple[int, ...] = (1000, 1000), head_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.sex_branch = nn.Sequential(nn.Linear(1, sex_features), nn.ReLU(inplace=True)) if sex_input else None
        width = backbone.num_features + (sex_features if sex_input else 0)
        layers: list[nn.Module] = []
        for hidden in head_hidden or []:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if head_dropout:
                layers.append(nn.Dropout(head_dropout))
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.head = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        # The head runs in fp32 even under autocast: a bf16 output has 8 significant bits, which
        # would put every prediction on a grid of ~0.3-0.7 months. It is a few small matmuls.
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            if self.sex_branch is not None:
                features = torch.cat([features, self.sex_branch(male.float())], dim=1)
            return self.head(features)


def build_model(model_cfg: dict, in_chans: int, out_dim: int) -> tuple[BoneAgeNet, str]:
    backbone, source = create_backbone(
        model_cfg["backbone"], in_chans=in_chans, pretrained=bool(model_cfg.get("pretrained")),
        pretrained_file=model_cfg.get("pretrained_file"), drop_rate=float(model_cfg.get("drop_rate", 0.0)),
        drop_path_rate=float(model_cfg.get("drop_path_rate", 0.0)),
    )
    net = BoneAgeNet(
        backbone, out_dim=out_dim, sex_input=bool(model_cfg.get("sex_input", True)),
        sex_features=int(model_cfg.get("sex_features", 32)), head_hidden=model_cfg.get("head_hidden") or [],
        head_dropout=float(model_cfg.get("head_dropout", 0.0)),
    )
    return net, source
