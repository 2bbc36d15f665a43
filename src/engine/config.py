"""Experiment configs: YAML files, profile overlays, and `key=value` overrides.

An experiment is one small YAML under `src/configs/`. It is merged over `defaults.yaml`, then
a profile from `src/configs/profiles/` (e.g. `demo` for 2 CPU cores, `full` for GPUs) is
merged over it, then command-line overrides such as `train.epochs=3`. The resolved config is
saved next to the outputs so every result says exactly how it was made.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..utils.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROFILE_DIR = CONFIG_DIR / "profiles"


def deep_merge(base: dict, overlay: dict) -> dict:
    """Recursively merge `overlay` into a copy of `base` (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def find_config(name_or_path: str, directory: Path = CONFIG_DIR) -> Path:
    """A config given by path, or by name under `directory` (with or without `.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = directory / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if candidate.is_file():
        return candidate
    available = sorted(p.stem for p in directory.glob("*.yaml") if p.stem != "defaults")
    raise UserError(f"config '{name_or_path}' not found; available in {directory}: {available}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value parsed as YAML, so 3 is int and [1,2] a list)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(cfg: dict, overrides: list[str], strict: bool = True) -> dict:
    """Apply `key=value` overrides; with `strict`, a key that the config lacks is an error
    (a typo must not silently train something else)."""
    cfg = copy.deepcopy(cfg)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = cfg
        for depth, key in enumerate(keys[:-1]):
            if key not in node or not isinstance(node[key], dict):
                if strict:
                    raise UserError(f"override '{text}': no section '{'.'.join(keys[: depth + 1])}' in the config")
                node[key] = {}
            node = node[key]
        if strict and keys[-1] not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
            raise UserError(f"override '{text}': unknown key '{'.'.join(keys)}' (known here: {known})")
        node[keys[-1]] = value
    return cfg


def load_config(name_or_path: str, profile: str | None = None, overrides: list[str] | None = None) -> dict:
    """Resolve defaults <- experiment <- profile <- overrides into one plain dict."""
    path = find_config(name_or_path)
    cfg = _load_yaml(CONFIG_DIR / "defaults.yaml")
    experiment = _load_yaml(path)
    cfg = deep_merge(cfg, experiment)
    cfg.setdefault("name", path.stem)
    if profile:
        cfg = deep_merge(cfg, _load_yaml(find_config(profile, PROFILE_DIR)))
    cfg["profile"] = profile
    cfg = apply_overrides(cfg, overrides or [])
    # The output folder: the experiment's name (overridable, to keep variants apart) + profile.
    cfg["experiment"] = f"{cfg['name']}-{profile}" if profile else str(cfg["name"])
    validate_config(cfg)
    return cfg


# Keys that change how a run is carried out but not what it learns.
RUN_CONTROL_KEYS = {"_resolved", "deterministic"}
RUN_CONTROL_TRAIN_KEYS = {"eval_batch_size", "log_every", "compile"}
RUN_CONTROL_DATA_KEYS = {"num_workers", "cache_workers"}


def config_fingerprint(cfg: dict) -> str:
    """A short hash of everything that changes the trained model, so a finished or
    interrupted fold can tell whether it was made with the same recipe."""
    import hashlib
    import json

    core = {k: v for k, v in cfg.items() if k not in RUN_CONTROL_KEYS}
    core["train"] = {k: v for k, v in cfg["train"].items() if k not in RUN_CONTROL_TRAIN_KEYS}
    core["data"] = {k: v for k, v in cfg["data"].items() if k not in RUN_CONTROL_DATA_KEYS}
    return hashlib.sha1(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:12]


def validate_config(cfg: dict) -> None:
    """Catch the mistakes that would otherwise surface deep inside training."""
    for section in ("data", "model", "target", "optim", "schedule", "train", "aug"):
        if not isinstance(cfg.get(section), dict):
            raise UserError(f"config lacks the '{section}' section")
    if int(cfg["data"]["size"]) < 32:
        raise UserError(f"data.size={cfg['data']['size']} is too small (at least 32 px)")
    if cfg["train"]["amp_dtype"] not in ("bfloat16", "float16", "none", None):
        raise UserError(f"train.amp_dtype must be bfloat16, float16 or none, not {cfg['train']['amp_dtype']!r}")
    if int(cfg["train"]["grad_accum_steps"]) < 1:
        raise UserError("train.grad_accum_steps must be >= 1")
    if not cfg.get("tta"):
        raise UserError("config needs a non-empty `tta` list (use [{name: identity}] for none)")
