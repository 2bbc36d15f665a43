"""Experiment configs: YAML files, profile overlays, and `key=value` overrides.

An experiment is one small YAML under `src/configs/`. It is merged over `defaults.yaml`, then
a profile from `src/configs/profiles/` (e.g. `demo` for 2 CPU cores, `full` for GPUs) is
merged over it, then command-line overrides such as `train.epochs=3`. The resolved config is
saved next to the outputs so every result says exactly how it was made.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` and `1E5` as floats: YAML 1.1 wants a dot and a signed
    exponent (`3.0e-4`), so PyYAML reads the usual way of writing a learning rate as a string."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*\.?[0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _yaml(text: str):
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def _load_yaml(path: Path) -> dict:
    try:
        data = _yaml(path.read_text()) or {}
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
        value = _yaml(raw) if raw != "" else None
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


def _load_experiment(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """An experiment YAML, merged over the experiment its `base:` names (a variant states only
    what differs: `base: m46_regression` plus `target: {form: classification}`)."""
    if path.resolve() in seen:
        raise UserError(f"{path}: `base` makes a cycle ({' -> '.join(p.stem for p in seen)} -> {path.stem})")
    experiment = _load_yaml(path)
    base = experiment.pop("base", None)
    if base is None:
        return experiment
    parent = _load_experiment(find_config(str(base)), seen + (path.resolve(),))
    parent.pop("name", None)  # a variant's outputs never land in its base's folder
    return deep_merge(parent, experiment)


def load_profile(profile: str) -> dict:
    """A profile's overlay (src/configs/profiles/<profile>.yaml)."""
    return _load_yaml(find_config(profile, PROFILE_DIR))


def load_config(name_or_path: str, profile: str | None = None, overrides: list[str] | None = None) -> dict:
    """Resolve defaults <- experiment <- profile <- the experiment's own `profiles.<profile>`
    section <- overrides into one plain dict.

    A profile (cpu, demo, full) sets what every experiment shares on that hardware (size,
    epochs, batch, workers). What differs per experiment on that hardware, such as the small
    backbone that stands in for Inception-v3 on a CPU, lives in the experiment's `profiles:`
    section, so an m46 config stays m46 under every profile.
    """
    path = find_config(name_or_path)
    cfg = _load_yaml(CONFIG_DIR / "defaults.yaml")
    experiment = _load_experiment(path)
    per_profile = experiment.pop("profiles", None) or {}
    if not isinstance(per_profile, dict):
        raise UserError(f"{path}: `profiles` must map profile names to config sections")
    cfg = deep_merge(cfg, experiment)
    cfg.setdefault("name", path.stem)
    if profile:
        cfg = deep_merge(cfg, load_profile(profile))
        cfg = deep_merge(cfg, per_profile.get(profile) or {})
    cfg["profile"] = profile
    cfg = apply_overrides(cfg, overrides or [])
    # The output folder: the experiment's name (overridable, to keep variants apart) + profile.
    cfg["experiment"] = f"{cfg['name']}-{profile}" if profile else str(cfg["name"])
    validate_config(cfg)
    train = cfg["train"]
    if train["epoch_scale"] != 1.0:  # applied once: the resolved config says what was written and what trains
        train["epochs_as_written"], train["epochs"] = train["epochs"], scaled_epochs(train["epochs"], train["epoch_scale"])
        train["epoch_scale"] = 1.0
    return cfg


def scaled_epochs(epochs: int, scale: float) -> int:
    """The epochs a run trains at `train.epoch_scale` (set by the speed probe,
    src/engine/speed_probe.py): floor(epochs x scale), at least 1."""
    return max(1, math.floor(epochs * scale + 1e-9))


# Keys that change how a run is carried out but not what it learns.
RUN_CONTROL_KEYS = {"_resolved", "deterministic"}
# The speed-sizing keys act only through the epochs they set, which the fingerprint holds.
RUN_CONTROL_TRAIN_KEYS = {"eval_batch_size", "log_every", "val_every", "compile", "sized_for_images_per_s",
                          "epoch_scale_range", "epoch_scale", "epochs_as_written"}
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


# --- validation -------------------------------------------------------------------------------
#
# Every key is checked against the type of its value in defaults.yaml (int, float, bool, str,
# list, mapping; a float key accepts an int, an int key neither a float nor a bool). A key whose
# default is null accepts null, a scalar or a list unless a rule below says more. RULES narrow or
# widen that for keys with a range or a choice; a new key in defaults.yaml is checked by its type
# without any change here.


@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], bool]
    expected: str  # completes "expected ...", e.g. "an integer >= 1"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bound_text(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def _in_bounds(value, low, high, low_open, high_open) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return not (high is not None and (value >= high if high_open else value > high))


def integer(low=None, high=None) -> Rule:
    return Rule(lambda v: _is_int(v) and _in_bounds(v, low, high, False, False),
                "an integer" + _bound_text(low, high, False, False))


def number(low=None, high=None, low_open=False, high_open=False) -> Rule:
    return Rule(lambda v: _is_number(v) and _in_bounds(v, low, high, low_open, high_open),
                "a number" + _bound_text(low, high, low_open, high_open))


def nullable(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.check(v), f"null or {rule.expected}")


def one_of(*choices) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in choices, "one of " + ", ".join(choices))


def number_or_pair(single: Rule, item: Rule = number()) -> Rule:
    """A range given as one number (symmetric, +-) or as a pair [lo, hi] with lo <= hi."""

    def check(v) -> bool:
        if isinstance(v, list):
            return len(v) == 2 and all(item.check(x) for x in v) and v[0] <= v[1]
        return single.check(v)

    pair = "numbers" if item.expected == "a number" else item.expected.replace("a number", "numbers")
    return Rule(check, f"{single.expected}, or a pair [lo, hi] of {pair}")


def positive_pair(unit: str = "") -> Rule:
    """A range [lo, hi] of numbers > 0 with lo <= hi."""
    return Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(x) and x > 0 for x in v)
                and v[0] <= v[1], f"a pair [lo, hi] of numbers > 0{' ' + unit if unit else ''}")


def list_of(item: Rule, items: str, non_empty: bool = False) -> Rule:
    """A list whose every element passes `item`; `items` names them in the plural."""
    return Rule(lambda v: isinstance(v, list) and (bool(v) or not non_empty) and all(item.check(x) for x in v),
                f"{'a non-empty' if non_empty else 'a'} list of {items}")


def _safe_name(value) -> bool:
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return bool(text.strip()) and text not in (".", "..") and not re.search(r"[/\\\x00]", text)


PROBABILITY = number(0, 1)
MAPPING = Rule(lambda v: isinstance(v, dict), "a mapping")
PREPROCESS_STEP = Rule(lambda v: isinstance(v, str) or (isinstance(v, dict) and "name" in v),
                       "a step name or a mapping with 'name'")

RULES: dict[str, Rule] = {
    "name": Rule(_safe_name, "a name for the experiment folder (no '/', not empty)"),
    "seed": integer(0),
    "data.size": integer(32),
    "data.channels": Rule(lambda v: _is_int(v) and v in (1, 3), "1 or 3"),
    "data.preprocess": list_of(PREPROCESS_STEP, "step names or mappings with 'name'", non_empty=True),
    "data.mean": number(),
    "data.std": number(0, low_open=True),
    "data.num_workers": integer(0),
    "data.cache_workers": nullable(integer(1)),
    "data.limit": nullable(integer(1)),
    "model.pretrained_file": nullable(Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a file path")),
    "model.drop_rate": number(0, 1, high_open=True),
    "model.drop_path_rate": number(0, 1, high_open=True),
    "model.head_dropout": number(0, 1, high_open=True),
    "model.sex_features": integer(1),
    "model.head_hidden": list_of(integer(1), "integers >= 1"),
    "optim.lr": number(0, low_open=True),
    "optim.weight_decay": number(0),
    "schedule.warmup_epochs": integer(0),
    "schedule.warmup_lr": number(0),
    "schedule.min_lr": number(0),
    "train.epochs": integer(1),
    "train.batch_size": integer(1),
    "train.eval_batch_size": integer(1),
    "train.grad_accum_steps": integer(1),
    "train.amp_dtype": one_of("bfloat16", "float16", "none"),
    "train.ema_decay": number(0, 1),
    "train.grad_clip": nullable(number(0, low_open=True)),
    "train.log_every": integer(0),
    "train.val_every": integer(1),
    "train.sized_for_images_per_s": nullable(number(0, low_open=True)),
    "train.epoch_scale_range": positive_pair(),
    "train.epoch_scale": number(0, low_open=True),
    "train.epochs_as_written": nullable(integer(1)),
    "train.predict_from": one_of("last", "best"),
    "data.sex": one_of("both", "male", "female"),
    "target.form": one_of("regression", "classification"),
    "target.loss": one_of("l1", "smooth_l1", "mse"),
    "target.bins": integer(2),
    "target.ce_weight": number(0),
    "target.ce_sigma": number(0, low_open=True),
    "aug.rotate": number_or_pair(number(0)),
    "aug.scale": number_or_pair(number(0, 1, high_open=True), number(0, low_open=True)),
    "aug.shift": number_or_pair(number(0)),
    "aug.brightness": number_or_pair(number(0)),
    "aug.contrast": number_or_pair(number(0)),
    "aug.gamma": positive_pair("(percent)"),
    "aug.hflip": PROBABILITY,
    "tta": list_of(MAPPING, "mappings (views such as {rotate: 6})", non_empty=True),
}


def _rule_from_default(key: str, default) -> Rule | None:
    """The type the default's value implies; None where anything goes (a mapping recurses)."""
    if key.rsplit(".", 1)[-1].startswith("p_"):
        return PROBABILITY
    if isinstance(default, bool):
        return Rule(lambda v: isinstance(v, bool), "true or false")
    if isinstance(default, int):
        return integer()
    if isinstance(default, float):
        return number()
    if isinstance(default, str):
        return Rule(lambda v: isinstance(v, str), "a string")
    if isinstance(default, list):
        if default and all(isinstance(x, dict) for x in default):
            return list_of(MAPPING, "mappings")
        if default and all(_is_int(x) for x in default):
            return list_of(integer(), "integers")
        if default and all(_is_number(x) for x in default):
            return list_of(number(), "numbers")
        return Rule(lambda v: isinstance(v, list), "a list")
    if default is None:
        return Rule(lambda v: v is None or isinstance(v, (bool, int, float, str, list)), "null, a value or a list")
    return None


def _check(key: str, value, rule: Rule) -> None:
    if rule.check(value):
        return
    if value is None:
        raise UserError(f"{key} has no value (empty or null): expected {rule.expected}")
    raise UserError(f"{key}={value!r}: expected {rule.expected}")


def _validate_section(cfg: dict, defaults: dict, prefix: str = "") -> None:
    for key, default in defaults.items():
        if key not in cfg:
            continue
        dotted = f"{prefix}{key}"
        value = cfg[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise UserError(f"{dotted}={value!r}: expected a mapping (the '{dotted}' section)")
            _validate_section(value, default, dotted + ".")
            continue
        rule = RULES.get(dotted) or _rule_from_default(dotted, default)
        if rule is not None:
            _check(dotted, value, rule)


def validate_config(cfg: dict) -> None:
    """Catch the mistakes that would otherwise surface deep inside training (or after the whole
    cache was built): every value must have its default's type and lie in its range. A UserError
    names the key, the value given and what was expected."""
    for section in ("data", "model", "target", "optim", "schedule", "train", "aug"):
        if section not in cfg:
            raise UserError(f"config lacks the '{section}' section")
        if not isinstance(cfg[section], dict):
            raise UserError(f"{section}={cfg[section]!r}: expected a mapping (the '{section}' section)")
    defaults = _load_yaml(CONFIG_DIR / "defaults.yaml")
    if "name" in cfg:
        _check("name", cfg["name"], RULES["name"])
    _validate_section(cfg, defaults)
    if not cfg.get("tta"):
        raise UserError("config needs a non-empty `tta` list (use [{name: identity}] for none)")
