"""What the learned keypoint detector and the learned hand mask share: letterboxing into a square
input, and a timm encoder with a light U-Net decoder (`DenseNet`) that outputs a dense map.

Both models see the image resized with its aspect kept and centred in a `side` x `side` square
padded with 0, so one network serves films of any size and their outputs map back exactly to the
ORIGINAL pixels (`Letterbox`).

Their training is one: `EpochDataset` (augmentation a function of seed, epoch and row),
`LearnedModel` (build, save and load a checkpoint of one kind, with the ids it trained on) and
`train_model` (reuse a finished model of the same fingerprint, else seed, build, `fit` with the
engine's epoch loop and save); each model adds only its targets, loss and network."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Mapping

import albumentations as A
import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..data.images import read_gray8
from ..engine.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from ..engine.distributed import resolve_device
from ..engine.loops import Precision, train_one_epoch
from ..engine.trainer import seed_everything
from ..models.boneage_net import hub_reachable
from ..utils.errors import DataError, UserError

log = logging.getLogger(__name__)

_MEAN, _STD = 0.45, 0.25  # input normalisation of x/255


@dataclass
class NetConfig:
    """What both learned models share; everything here changes the trained weights."""

    backbone: str = "resnet10t"
    side: int = 128  # letterbox side, px (a multiple of 32)
    width: int = 64  # decoder channels
    epochs: int = 40
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    rotate: float = 20.0  # degrees, +-
    scale: float = 0.15  # +-
    shift: float = 0.08  # share of the side, +-
    flip_p: float = 0.5
    seed: int = 0
    amp_dtype: str | None = None
    pretrained: bool = False  # ImageNet weights from the hub when reachable
    device: str = "auto"

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def check(self) -> None:
        if self.side % 32 or self.side < 32:
            raise UserError(f"learned model side must be a positive multiple of 32, got {self.side}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")


@dataclass(frozen=True)
class Letterbox:
    """Original pixels -> letterboxed input pixels (pixel centres at integers, as OpenCV)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_input(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.stack([(pts[:, 0] + 0.5) * self.scale_x - 0.5 + self.offset_x,
                         (pts[:, 1] + 0.5) * self.scale_y - 0.5 + self.offset_y], axis=1)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.stack([(pts[:, 0] - self.offset_x + 0.5) / self.scale_x - 0.5,
                         (pts[:, 1] - self.offset_y + 0.5) / self.scale_y - 0.5], axis=1)


def letterbox(image: np.ndarray, side: int) -> tuple[np.ndarray, Letterbox]:
    """`image` resized (aspect kept) and centred in a side x side square padded with 0."""
    h, w = image.shape[:2]
    k = side / max(h, w)
    new_w, new_h = max(1, int(round(w * k))), max(1, int(round(h * k)))
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (new_w, new_h), interpolation=interp)
    out = np.zeros((side, side), dtype=image.dtype)
    x0, y0 = (side - new_w) // 2, (side - new_h) // 2
    out[y0:y0 + new_h, x0:x0 + new_w] = small
    return out, Letterbox(new_w / w, new_h / h, float(x0), float(y0))


class DenseNet(nn.Module):
    """A timm encoder's feature pyramid merged top-down (a light U-Net decoder) into one map at
    the finest stride in `out_indices`. Serves keypoint heatmaps and mask logits alike."""

    def __init__(self, backbone: str, out_channels: int, out_indices=(1, 2, 3), width: int = 64,
                 pretrained: bool = False):
        super().__init__()
        if not timm.is_model(backbone.split(".")[0]):
            raise UserError(f"unknown backbone '{backbone}' (see timm.list_models())")
        use_hub = pretrained and hub_reachable()
        if pretrained and not use_hub:
            log.warning("%s: the model hub is unreachable; the detector trains from scratch", backbone)
        self.encoder = timm.create_model(backbone, features_only=True, out_indices=tuple(out_indices), in_chans=1,
                                         pretrained=use_hub)
        channels = self.encoder.feature_info.channels()
        self.stride = int(self.encoder.feature_info.reduction()[0])
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.merge = nn.ModuleList(_conv_bn_relu(width) for _ in channels[:-1])
        self.out = nn.Sequential(_conv_bn_relu(width), nn.Conv2d(width, out_channels, 1))

    def forward(self, image: torch.Tensor, male: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.encoder(image)
        x = self.lateral[-1](feats[-1])
        for level in range(len(feats) - 2, -1, -1):
            x = F.interpolate(x, size=feats[level].shape[-2:], mode="bilinear", align_corners=False)
            x = self.merge[level](x + self.lateral[level](feats[level]))
        return self.out(x).float()  # losses and soft-argmax in fp32 even under autocast


def _conv_bn_relu(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> normalised float (N, 1, H, W)."""
    return ((torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0 - _MEAN) / _STD).unsqueeze(1)


def read_images(folder: str | Path, ids) -> dict[str, np.ndarray]:
    """id -> uint8 grey pixels of `<folder>/<id>.png` (DataError naming a missing file)."""
    return {str(i): read_gray8(Path(folder) / f"{i}.png").pixels for i in ids}


def as_gray(image: np.ndarray) -> np.ndarray:
    """uint8 2-D grey pixels: the models see one 8-bit channel whatever the file held."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        from .mask import as_gray_uint8

        image = as_gray_uint8(image)
    return image


def augmentation(cfg: NetConfig, keypoints: bool) -> A.Compose:
    """Rotation, scale, shift, horizontal flip and contrast; keypoints (and masks) move with the
    pixels. Points pushed outside stay in the list (the loss ignores them), so none is renumbered."""
    return A.Compose([
        A.Affine(scale=(1 - cfg.scale, 1 + cfg.scale), translate_percent=(-cfg.shift, cfg.shift),
                 rotate=(-cfg.rotate, cfg.rotate), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.9),
        A.HorizontalFlip(p=cfg.flip_p),
        A.RandomBrightnessContrast(0.15, 0.15, p=0.5),
        A.RandomGamma((80, 120), p=0.3),
    ], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False) if keypoints else None)


def seed_for(cfg: NetConfig, epoch: int, index: int) -> int:
    """One row's augmentation seed: a function of (seed, epoch, row) only, so a resumed training
    sees the same augmented images an uninterrupted one would."""
    return (cfg.seed * 1_000_003 + epoch * 10_007 + index) % 2**31


def fingerprint(cfg: NetConfig, *parts: str) -> str:
    """What a checkpoint was made from: the config and the labels (as text)."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()[:16]


class LazyImages(Mapping):
    """id -> uint8 grey pixels, read from disk on each access: the learned models' `images` for a
    whole dataset without holding every film in memory (they letterbox what they keep)."""

    def __init__(self, paths: Mapping[str, str]):
        self.paths = {str(k): str(v) for k, v in paths.items()}

    def __getitem__(self, image_id: str) -> np.ndarray:
        return read_gray8(self.paths[str(image_id)]).pixels

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self.paths


class EpochDataset(Dataset):
    """Letterboxed training rows augmented as a function of (seed, epoch, row) only, as the
    engine's epoch loop reads them: image, male (unused), age (the target) and index."""

    def __init__(self, images: list[np.ndarray], cfg: NetConfig, augment: bool, keypoints: bool):
        self.images, self.cfg, self.epoch = images, cfg, 0
        self.transform = augmentation(cfg, keypoints=keypoints) if augment else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def augmented(self, index: int, **targets) -> dict | None:
        """The row's augmentation of image and `targets` (albumentations' names), None without one."""
        if self.transform is None:
            return None
        self.transform.set_random_seed(seed_for(self.cfg, self.epoch, index))
        return self.transform(image=self.images[index], **targets)

    @staticmethod
    def sample(index: int, image: np.ndarray, target: torch.Tensor) -> dict:
        return {"image": to_tensor(image[None])[0], "male": torch.zeros(1), "age": target, "index": index}


class LearnedModel:
    """A trained network with its config, fingerprint, the ids it trained on and (when a caller
    says) the dataset those ids belong to; subclasses give
    KIND (the checkpoint's kind), CONFIG (its config class), FILE (its name in a work folder),
    WHAT (for logs) and `network(cfg)`."""

    KIND = ""
    CONFIG: type = NetConfig
    FILE = "model.pt"
    WHAT = "model"

    def __init__(self, model: nn.Module, cfg: NetConfig, fingerprint: str = "", trained_ids=()):
        self.model, self.cfg, self.fingerprint = model.eval(), cfg, fingerprint
        self.trained_ids = [str(i) for i in trained_ids]
        self.dataset = ""  # the dataset of trained_ids, where known

    @classmethod
    def network(cls, cfg) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def build(cls, cfg):
        cfg.check()
        return cls(cls.network(cfg), cfg)

    def save(self, path: str | Path) -> Path:
        save_checkpoint(Path(path), kind=self.KIND, model=self.model, config=asdict(self.cfg),
                        fingerprint=self.fingerprint, trained_ids=list(self.trained_ids), dataset=self.dataset)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path):
        state = load_model_state(path, cls.KIND)
        loaded = cls.build(cls.CONFIG.from_dict({**state["config"], "pretrained": False}))
        loaded.model.load_state_dict(state["model"])
        loaded.model.eval()
        loaded.cfg.pretrained = bool(state["config"].get("pretrained", False))
        loaded.fingerprint = str(state.get("fingerprint", ""))
        loaded.trained_ids = [str(i) for i in state.get("trained_ids", [])]
        loaded.dataset = str(state.get("dataset", ""))
        return loaded


def load_model_state(path: str | Path, kind: str) -> dict:
    """A saved model's checkpoint (weights-only load), checked to be of `kind`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no saved model there (train one first)")
    try:
        state = load_checkpoint(path)
    except Exception as exc:  # truncated, not a torch file, pickled code
        raise DataError(f"{path}: cannot be read as a saved model ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise DataError(f"{path}: not a {kind} checkpoint (it is {state.get('kind') if isinstance(state, dict) else '?'})")
    return state


def train_model(cls: type[LearnedModel], cfg: NetConfig, made_from: str, trained_ids: list[str],
                make_dataset: Callable[[nn.Module], Dataset], codec, work_dir: str | Path | None = None,
                init_from: str | Path | None = None, resume: bool = True) -> LearnedModel:
    """What both learned models' training shares: reuse `work_dir/cls.FILE` when it was made from
    the same fingerprint, else seed, build (starting from `init_from`'s weights when given), `fit`
    on `make_dataset(network)` (its `last.pt` resumed under the same fingerprint) and save."""
    work = Path(work_dir) if work_dir else None
    if work and resume and (work / cls.FILE).is_file():
        done = cls.load(work / cls.FILE)
        if done.fingerprint == made_from:
            log.info("%s: %s is complete, reused", cls.WHAT, work / cls.FILE)
            return done
    seed_everything(cfg.seed, deterministic=False)
    device = resolve_device(cfg.device)
    result = cls.build(cfg)
    if init_from:
        result.model.load_state_dict(cls.load(init_from).model.state_dict())
    model = result.model.to(device)
    fit(model, make_dataset(model), codec, cfg, device, made_from, work / "last.pt" if work else None, resume,
        cls.WHAT)
    result.fingerprint, result.trained_ids = made_from, [str(i) for i in trained_ids]
    if work:
        result.save(work / cls.FILE)
    return result


def fit(model: nn.Module, dataset, codec, cfg: NetConfig, device: torch.device, fingerprint_: str,
        last_path: Path | None, resume: bool, what: str) -> list[dict]:
    """Train `model` on `dataset` (dict batches: image, male, age = the target) with the engine's
    epoch loop, AdamW and a cosine schedule with 1 warm-up epoch. With `last_path`, the full state is
    saved atomically each epoch and resumed when its fingerprint matches. Returns the epoch history."""
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=min(cfg.batch_size, len(dataset)), num_workers=0,
                        sampler=RandomSampler(dataset, generator=generator), drop_last=len(dataset) > cfg.batch_size)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=1,
                                       warmup_lr=cfg.lr / 20, min_lr=cfg.lr / 100, step_on_epochs=False,
                                       updates_per_epoch=len(loader))
    precision = Precision(device, cfg.amp_dtype, channels_last=False)
    scaler = precision.make_scaler()
    start_epoch, updates, history = 0, 0, []
    if last_path is not None and resume and last_path.is_file():
        state = load_checkpoint(last_path)
        if state.get("fingerprint") == fingerprint_:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, updates, history = int(state["epoch"]) + 1, int(state["updates"]), list(state["history"])
            set_rng_state(state["rng"])
            log.info("%s: resumed %s after epoch %d of %d", what, last_path, start_epoch, cfg.epochs)
        else:
            log.warning("%s: %s was made with another config or labels; training afresh", what, last_path)
    log.info("%s: %s at %d px, %d images, epochs %d-%d, device %s", what, cfg.backbone, cfg.side, len(dataset),
             start_epoch + 1, cfg.epochs, device)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        dataset.set_epoch(epoch)
        generator.manual_seed(cfg.seed * 1009 + epoch)  # shuffle order is a function of (seed, epoch)
        stats = train_one_epoch(model, loader, codec, optimizer, scheduler, scaler, precision, epoch, updates,
                                grad_clip=5.0, desc=f"{what} epoch {epoch + 1}/{cfg.epochs}")
        updates = stats.updates
        history.append({"epoch": epoch + 1, "loss": float(stats.loss), "seconds": time.perf_counter() - t0})
        if last_path is not None:
            save_checkpoint(last_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            epoch=epoch, updates=updates, history=history, fingerprint=fingerprint_, config=asdict(cfg))
    model.eval()
    return history
