"""Thin command-line wrappers: argument parsing only; the work lives in data/, engine/, ...

Each module here defines `HELP`, `add_arguments(parser)` and `run(args) -> int`, and imports
heavy packages (torch, timm) inside `run`, so `python -m src <cmd> --help` stays fast.
"""
