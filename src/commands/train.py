"""`python -m src train`: train an experiment config over folds (torchrun-ready)."""

from __future__ import annotations

import argparse

HELP = "Train an experiment config over folds; writes checkpoints, metrics, OOF and test predictions."


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment name under src/configs/ or a YAML path")
    parser.add_argument("--profile", help="overlay from src/configs/profiles/ (demo, cpu, full)")
    parser.add_argument("--input", default="input", help="dataset root, audited with `python -m src audit`")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, action="append", help="train this fold (repeatable)")
    which.add_argument("--folds", choices=["all"], default="all", help="train every fold")
    parser.add_argument("--resume", action="store_true", help="continue interrupted folds from their last.pt")
    parser.add_argument("--skip-existing", action="store_true", help="skip folds whose predictions are complete")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun sets LOCAL_RANK)")
    parser.add_argument("--pretrained-file", help="local ImageNet weights for the backbone (model.pretrained_file)")
    parser.add_argument("--amp-dtype", choices=["bfloat16", "float16", "none"], help="train.amp_dtype")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="train.channels_last")
    parser.add_argument("--grad-accum-steps", type=int, help="train.grad_accum_steps")
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("--batch-size", type=int, help="train.batch_size")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="train.ema (EMA of weights)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="train.compile (torch.compile)")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None, help="bitwise-reproducible mode (tests)")
    parser.add_argument("--seed", type=int, help="seed (logged; fold k uses seed + 1000 k)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.epochs=3 data.size=256 model.backbone=resnet18")


FLAG_KEYS = {
    "pretrained_file": "model.pretrained_file", "amp_dtype": "train.amp_dtype",
    "channels_last": "train.channels_last", "grad_accum_steps": "train.grad_accum_steps",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "ema": "train.ema", "compile": "train.compile",
    "deterministic": "deterministic", "seed": "seed",
}


def flag_overrides(args) -> list[str]:
    """Flags are sugar for `key=value` overrides, applied after the positional ones."""
    import yaml

    out = []
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr)
        if value is not None:
            out.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


def run(args) -> int:
    from ..engine.config import load_config
    from ..engine.experiment import run_experiment

    cfg = load_config(args.config, args.profile, list(args.overrides) + flag_overrides(args))
    run_experiment(cfg, args.input, folds=args.fold, resume=args.resume, skip_existing=args.skip_existing,
                   device=args.device)
    return 0
