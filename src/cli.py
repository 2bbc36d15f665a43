"""`python -m src <command>`: one entry point for every stage of the workbench."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .utils.errors import UserError

# command name -> module under src.commands (a fixed table, not user input)
COMMANDS = ("phantom", "audit", "folds", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src",
        description="boneage-workbench: pediatric bone age from left-hand radiographs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__package__}.commands.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP,
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
