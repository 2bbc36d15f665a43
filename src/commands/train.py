"""`python -m src train`: train an experiment config over folds (torchrun-ready)."""

from __future__ import annotations

import argparse

HELP = "Train an experiment config over folds; writes checkpoints, metrics, OOF and test predictions."


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, metavar="NAME", help="experiment name under src/configs/ or a YAML path")
    parser.add_argument("--profile", metavar="NAME", help="overlay from src/configs/profiles/ (demo, cpu, full)")
    parser.add_argument("--input", default="input", metavar="DIR", help="dataset root, audited with `python -m src audit`")
    parser.add_argument("--fold", type=int, action="append", metavar="K", help="train only this fold (repeatable; default: every fold)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue an interrupted fold from its last.pt when it was trained with the same "
                             "recipe, folds and data (on by default)")
    parser.add_argument("--skip-existing", action=argparse.BooleanOptionalAction, default=True,
                        help="skip folds whose predictions are complete under the same recipe, folds and data "
                             "(on by default)")
    parser.add_argument("--force", action="store_true",
                        help="retrain the requested folds from scratch (= --no-skip-existing --no-resume)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="smoke run on N random training images (data.limit; its own -limitN folder)")
    parser.add_argument("--device", default="auto", metavar="DEV", help="auto | cpu | cuda | cuda:N (torchrun sets LOCAL_RANK)")
    parser.add_argument("--pretrained-file", metavar="FILE", help="local ImageNet weights for the backbone (model.pretrained_file)")
    parser.add_argument("--amp-dtype", choices=["bfloat16", "float16", "none"], help="train.amp_dtype")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="train.channels_last")
    parser.add_argument("--grad-accum-steps", type=int, metavar="N", help="train.grad_accum_steps")
    parser.add_argument("--epochs", type=int, metavar="N", help="train.epochs")
    parser.add_argument("--batch-size", type=int, metavar="N", help="train.batch_size")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="train.ema (EMA of weights)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="train.compile (torch.compile)")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None, help="bitwise-reproducible mode (tests)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed (logged; fold k uses seed + 1000 k)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.epochs=3 data.size=256 model.backbone=resnet18 "
                             "(give them together, before or after the options)")


FLAG_KEYS = {
    "pretrained_file": "model.pretrained_file", "amp_dtype": "train.amp_dtype",
    "channels_last": "train.channels_last", "grad_accum_steps": "train.grad_accum_steps",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "ema": "train.ema", "compile": "train.compile",
    "deterministic": "deterministic", "seed": "seed", "limit": "data.limit",
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

    cfg = load_config(args.config, args.profile, list(args.overrides) + flag_overrides(args))
    from ..engine.experiment import run_experiment  # torch: imported only once the config is valid

    run_experiment(cfg, args.input, folds=args.fold, resume=args.resume and not args.force,
                   skip_existing=args.skip_existing and not args.force, device=args.device)
    return 0
