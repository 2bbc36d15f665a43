"""`python -m src <command>`: one entry point for every stage of the workbench."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .utils.errors import UserError

# command name -> module under src.commands (a fixed table, not user input)
COMMANDS = ("phantom", "audit", "folds", "register", "train", "stack", "leaderboard", "submit", "report", "predict",
            "kaggle-package", "bench")
# commands that write files (all of them: phantom data or its preview, audit tables, folds, runs)
WRITING_COMMANDS = frozenset(COMMANDS)

log = logging.getLogger("cli")


class HelpFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` only where it tells the reader something: not for a None, False or
    empty default, not for on/off flags, and not where the help text already states a default."""

    FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                    argparse.BooleanOptionalAction, argparse._HelpAction, argparse._VersionAction,
                    argparse._CountAction, argparse._AppendConstAction)

    SUFFIX = " (default: %(default)s)"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if text.endswith(self.SUFFIX):  # BooleanOptionalAction adds it itself (Python < 3.13)
            text = text[: -len(self.SUFFIX)]
        if (default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, (list, tuple, dict, str)) and not default)
                or isinstance(action, self.FLAG_ACTIONS)
                or "default" in text.lower()):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + self.SUFFIX
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src",
        description="boneage-workbench: pediatric bone age from left-hand radiographs.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__package__}.commands.{name.replace('-', '_')}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def sweep_working_tree() -> None:
    """Remove temporary files that killed runs left under working/ (never a live process's).

    Under torchrun only rank 0 sweeps: the other ranks may sit on other machines, where the PIDs
    of rank 0's writes cannot be checked."""
    from .data.layout import working_root
    from .utils.io import sweep_orphan_temps

    if os.environ.get("RANK", "0") != "0":
        return
    root = working_root()
    if not root.is_dir():
        return
    try:
        sweep_orphan_temps(root)
    except OSError as exc:  # housekeeping must never stop the command itself
        log.warning("could not sweep temporary files under %s: %s", root, exc)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command in WRITING_COMMANDS:
            sweep_working_tree()
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
