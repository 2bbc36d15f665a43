"""`python -m src train`: train an experiment config over folds (torchrun-ready)."""

from __future__ import annotations

import argparse

HELP = "Train an experiment config over folds; writes checkpoints, metrics, OOF and test predictions."


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, action="append", metavar="NAME",
                        help="experiment name under src/configs/ or a YAML path (repeatable: the experiments train "
                             "one after another, or with --jobs from one queue of folds)")
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
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train N folds at once, in N processes sharing the cores (CPU: 2 jobs on 2 cores "
                             "train ~1.4x faster than 1); logs per fold in fold<k>/train.log")
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


def child_arguments(args, config: str) -> list[str]:
    """This run's arguments for a `--jobs` child training `config` (the child adds its own
    `--fold K --jobs 1`): the same profile, input, device, resume/skip choices and overrides."""
    argv = ["--input", args.input, "--device", args.device]
    if args.profile:
        argv += ["--profile", args.profile]
    if args.force:
        argv.append("--force")
    if not args.resume:
        argv.append("--no-resume")
    if not args.skip_existing:
        argv.append("--no-skip-existing")
    return ["--config", config] + argv + list(args.overrides) + flag_overrides(args)


def speed_probe_scale(args, overrides: list[str], cfg: dict) -> float | None:
    """The epoch scale from this machine's speed probe, where the profile is sized by speed
    (`train.sized_for_images_per_s`) and neither the epochs nor the scale were given by hand."""
    if not cfg["train"].get("sized_for_images_per_s"):
        return None
    if any(text.split("=", 1)[0] in ("train.epochs", "train.epoch_scale") for text in overrides):
        return None
    from ..data.layout import dataset_name, working_root
    from ..engine.speed_probe import probed_epoch_scale

    return probed_epoch_scale(cfg, working_root() / dataset_name(args.input), args.device, jobs=args.jobs)


def run(args) -> int:
    from ..engine.config import load_config
    from ..utils.errors import UserError

    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, not {args.jobs}")
    overrides = list(args.overrides) + flag_overrides(args)
    # every config is resolved and validated before any training starts
    configs = [(name, load_config(name, args.profile, overrides)) for name in args.config]
    scale = speed_probe_scale(args, overrides, configs[0][1])
    if scale is not None:
        args.overrides = list(args.overrides) + [f"train.epoch_scale={scale}"]  # the --jobs children get it too
        overrides = list(args.overrides) + flag_overrides(args)
        configs = [(name, load_config(name, args.profile, overrides)) for name in args.config]
    resume, skip_existing = args.resume and not args.force, args.skip_existing and not args.force
    if args.jobs > 1:
        from ..engine.fold_jobs import ExperimentJob, run_folds_in_parallel

        run_folds_in_parallel([ExperimentJob(cfg, child_arguments(args, name)) for name, cfg in configs], args.input,
                              args.jobs, folds=args.fold, resume=resume, skip_existing=skip_existing,
                              device=args.device)
        return 0
    from ..engine.experiment import run_experiment  # torch: imported only once the configs are valid

    for _, cfg in configs:
        run_experiment(cfg, args.input, folds=args.fold, resume=resume, skip_existing=skip_existing,
                       device=args.device)
    return 0
