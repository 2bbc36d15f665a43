"""Backbone + sex branch + dense head: the RSNA 2017 winner's architecture for any backbone.

pooled image features ----------------\
                                       concat -> dense(1000) -> dense(1000) -> output
male (0/1) -> dense(1 -> 32) -> ReLU -/

A backbone is a timm model, or one of this project's models (PROJECT_BACKBONES, looked up first:
`m46`, the paper's VGG-like network). A backbone may name its head's activation with a
`head_activation` attribute (m46: ELU); timm backbones get ReLU.
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
from .m46 import M46

log = logging.getLogger(__name__)

# Project models, checked before timm: name -> constructor(in_chans=, drop_rate=) with `.num_features`.
PROJECT_BACKBONES: dict[str, type[nn.Module]] = {"m46": M46}

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU}


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


def _read_state_dict(path: Path) -> dict:
    """Tensors from a .safetensors file, or a torch.save'd state_dict (weights_only) or checkpoint."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with code, truncated file, not a torch file at all
        raise UserError(f"model.pretrained_file {path}: cannot be read as weights ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
    if isinstance(state, dict):
        for key in ("model", "state_dict"):  # a checkpoint of this project (last.pt/best.pt) or a wrapper
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"model.pretrained_file {path}: expected a state_dict (names -> tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # a whole BoneAgeNet: keep its backbone
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _load_error_detail(exc: RuntimeError) -> str:
    """load_state_dict's mismatch lines (missing keys, size mismatches) as one line."""
    return " ".join(line.strip() for line in str(exc).splitlines()[1:])[:400]


def _adapt_stem(weight: torch.Tensor, in_chans: int, where: str) -> torch.Tensor:
    """A stem conv's weights for `in_chans` inputs that respond alike to a grey image: k channels
    -> 1 sums them; 1 -> k repeats the channel and divides by k."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    raise UserError(f"{where}: its stem takes {weight.shape[1]} channels, the model {in_chans} (data.channels)")


def _create_project_backbone(name: str, in_chans: int, pretrained: bool, pretrained_file: str | None,
                             drop_rate: float, drop_path_rate: float) -> tuple[nn.Module, str]:
    """A project model (m46). It has no ImageNet weights: `pretrained` means "from scratch", and a
    `pretrained_file` is a state_dict saved from the same model (or a checkpoint holding one)."""
    if drop_path_rate:
        log.warning("%s: model.drop_path_rate=%g is ignored (the model has no residual paths to drop)",
                    name, drop_path_rate)
    model = PROJECT_BACKBONES[name](in_chans=in_chans, drop_rate=drop_rate)
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(f"model.pretrained_file {path} does not exist")
        state = _read_state_dict(path)
        stem = f"{getattr(model, 'first_conv', '')}.weight"
        if stem in state and state[stem].ndim == 4 and state[stem].shape[1] != in_chans:
            log.info("%s: %s adapted from %d to %d input channel(s)", name, stem, state[stem].shape[1], in_chans)
            state[stem] = _adapt_stem(state[stem], in_chans, f"model.pretrained_file {path}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise UserError(f"model.pretrained_file {path} does not hold {name} weights: {_load_error_detail(exc)}"
                            ) from exc
        log.info("%s: weights from %s", name, path)
        return model, f"file:{path}"
    if pretrained:
        log.info("%s: no pretrained weights exist for this model; training from scratch", name)
    return model, "scratch"


def create_backbone(name: str, in_chans: int, pretrained: bool, pretrained_file: str | None,
                    drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                    backbone_kwargs: dict | None = None) -> tuple[nn.Module, str]:
    """A backbone without its classifier (pooled features out), and where its weights came from.

    A project model (PROJECT_BACKBONES, e.g. m46) is looked up first; any other name is a timm
    model. For timm, weights come from `pretrained_file` when given (offline machines; timm adapts
    the stem to `in_chans`), else from the hub when `pretrained` and reachable. Without either it
    trains from scratch and says so; it never fails because a hub is out of reach.
    `backbone_kwargs` go to timm's model constructor (e.g. resnet `channels`, timm's --model-kwargs).
    """
    if name in PROJECT_BACKBONES:
        if backbone_kwargs:
            raise UserError(f"model.backbone_kwargs {backbone_kwargs}: only timm backbones take them, not {name}")
        return _create_project_backbone(name, in_chans, pretrained, pretrained_file, drop_rate, drop_path_rate)
    kwargs = {"num_classes": 0, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"unknown backbone '{name}': neither a project model ({', '.join(sorted(PROJECT_BACKBONES))}) "
                        "nor a timm model (see timm.list_models())")
    if backbone_kwargs:
        clash = sorted(set(backbone_kwargs) & {"num_classes", "in_chans", "drop_rate", "drop_path_rate"})
        if clash:
            raise UserError(f"model.backbone_kwargs sets {', '.join(clash)}: the model section sets those "
                            "(data.channels, model.drop_rate, model.drop_path_rate)")
        kwargs.update(backbone_kwargs)
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(f"model.pretrained_file {path} does not exist")
        try:
            model = _create_timm(name, backbone_kwargs, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                 **kwargs)
        except RuntimeError as exc:  # weights of another shape (another width through backbone_kwargs)
            if not backbone_kwargs:
                raise
            raise UserError(f"model.pretrained_file {path} does not fit {name} with model.backbone_kwargs "
                            f"{backbone_kwargs} (set model.backbone_kwargs={{}} for the standard model): "
                            f"{_load_error_detail(exc)}") from exc
        log.info("%s: pretrained weights from %s", name, path)
        return model, f"file:{path}"
    if pretrained and not _hf_offline() and not hub_reachable():
        log.warning("%s: the model hub is unreachable; training from scratch (set model.pretrained_file "
                    "or --pretrained-file to local weights, or HF_HUB_OFFLINE=1 to use the local HF cache)", name)
    elif pretrained:
        try:
            model = _create_timm(name, backbone_kwargs, pretrained=True, **kwargs)
            log.info("%s: pretrained weights from the hub%s", name, " cache (HF_HUB_OFFLINE)" if _hf_offline() else "")
            return model, "hub"
        except Exception as exc:  # offline, no such weights, hub error: all mean "from scratch"
            log.warning("%s: pretrained weights unavailable (%s: %s); training from scratch",
                        name, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
    # model.pretrained false: the caller says where the weights come from (scratch or a checkpoint)
    return _create_timm(name, backbone_kwargs, pretrained=False, **kwargs), "scratch"


def _create_timm(name: str, backbone_kwargs: dict | None, **kwargs) -> nn.Module:
    """timm.create_model, where a keyword the model does not take is the config's error, named."""
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        if backbone_kwargs:
            raise UserError(f"model.backbone_kwargs {backbone_kwargs}: {name} does not take them ({exc})") from exc
        raise


class BoneAgeNet(nn.Module):
    """`activation` is the head's ("relu", the winner's; "elu", the paper's m46 head); the sex
    branch keeps its ReLU. Each hidden layer is Linear -> activation [-> Dropout(head_dropout)]."""

    def __init__(self, backbone: nn.Module, out_dim: int = 1, sex_input: bool = True, sex_features: int = 32,
                 head_hidden: list[int] | tuple[int, ...] = (1000, 1000), head_dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"head activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
        self.backbone = backbone
        self.sex_branch = nn.Sequential(nn.Linear(1, sex_features), nn.ReLU(inplace=True)) if sex_input else None
        width = backbone.num_features + (sex_features if sex_input else 0)
        layers: list[nn.Module] = []
        for hidden in head_hidden or []:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation](inplace=True)]
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
        backbone_kwargs=model_cfg.get("backbone_kwargs") or None,
    )
    net = BoneAgeNet(
        backbone, out_dim=out_dim, sex_input=bool(model_cfg.get("sex_input", True)),
        sex_features=int(model_cfg.get("sex_features", 32)), head_hidden=model_cfg.get("head_hidden") or [],
        head_dropout=float(model_cfg.get("head_dropout", 0.0)),
        activation=getattr(backbone, "head_activation", "relu"),  # m46: ELU; timm backbones: ReLU
    )
    return net, source
