"""A persistent fold worker for `train --jobs N` (started by fold_jobs.py): one process that
trains many folds in turn, so torch, timm, albumentations and OpenCV are imported once per
worker (~5 s on 2 cores), not once per fold.

Protocol: `python -m src.engine.fold_worker` reads one JSON object a line from stdin,
`{"argv": [...], "log": "<experiment>/fold<k>/train.log"}`, where argv is what `python -m src`
would get (`train ... --fold k --jobs 1`). For each job it points fds 1 and 2 at that log
(append), so Python logging, tqdm and C-level output land there as with a process of its own,
runs `src.cli.main(argv)`, puts those fds back, and answers `{"rc": <exit code>}` on a dup of
its original stdout (the result channel; nothing else is written there). An empty line or EOF
on stdin ends the worker (exit 0).

What a fold could leave behind for the next one is reset before each job: the torch
deterministic/cudnn flags and thread count, the environment and the working directory. The
trainer seeds every random generator per fold, and src/ keeps no data in module globals.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

# Test hook: a comma list of fold numbers; the worker os._exit(3)s at the start of those folds.
EXIT_ON_FOLD_ENV = "BONEAGE_TEST_WORKER_EXIT_ON_FOLD"
MAIN_SCRIPT = str(Path(__file__).resolve().parents[1] / "__main__.py")  # sys.argv[0] under `python -m src`


HEAVY_MODULES = ("torch", "timm", "albumentations", "cv2", "src.cli", "src.engine.experiment")


def _import_once() -> None:
    """The heavy imports, paid once per worker (inside its first job, so an import error or
    warning lands in that fold's log, as it did in a process per fold)."""
    for name in HEAVY_MODULES:
        importlib.import_module(name)


class ProcessState:
    """The process-wide settings a fold can change that a fresh process would have at defaults."""

    def __init__(self) -> None:
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.torch = None

    def capture_torch(self) -> None:
        import torch

        self.torch = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled(),
                      torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.get_num_threads())

    def restore(self) -> None:
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)
        if self.torch is None:
            self.capture_torch()  # first job: torch was just imported with this process's defaults
            return
        import torch

        deterministic, warn_only, benchmark, cudnn_deterministic, threads = self.torch
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _fold_of(argv: list[str]) -> int | None:
    try:
        return int(argv[argv.index("--fold") + 1])
    except (ValueError, IndexError):
        return None


def _exit_folds() -> set[int]:
    return {int(k) for k in os.environ.get(EXIT_ON_FOLD_ENV, "").split(",") if k.strip()}


def run_job(job: dict, number: int, state: ProcessState, idle_fd: int) -> int:
    """Run one `python -m src` argv with fds 1 and 2 on the job's log; its exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    sink = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(sink, 1)
        os.dup2(sink, 2)
    finally:
        os.close(sink)
    argv = [str(a) for a in job["argv"]]
    code = 1
    try:
        print(f"fold worker pid {os.getpid()}: job {number}", flush=True)
        if _fold_of(argv) in _exit_folds():
            print(f"{EXIT_ON_FOLD_ENV}: exiting with code 3 (test hook)", flush=True)
            os._exit(3)
        try:
            _import_once()
            state.restore()
            sys.argv = [MAIN_SCRIPT, *argv]  # what a `python -m src` child had (recorded in config.yaml)
            from src.cli import main

            result = main(argv)
            code = 0 if result is None else int(result)
        except SystemExit as exc:  # argparse errors, sys.exit()
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except Exception:
            traceback.print_exc()
            code = 1
        gc.collect()  # this fold's loaders (and their worker processes) go now, not in the next fold
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(idle_fd, 1)  # between jobs a stray write goes to the worker's stderr, not a fold's log
        os.dup2(idle_fd, 2)
    return code


def main() -> int:
    results = os.fdopen(os.dup(1), "w", buffering=1)  # the result channel: the original stdout
    idle_fd = os.dup(2)
    os.dup2(idle_fd, 1)  # nothing printed outside a job can reach the result channel
    sys.stdout.reconfigure(line_buffering=True)  # a fold's prints and log lines stay in order
    state = ProcessState()
    number = 0
    try:
        while True:
            line = sys.stdin.readline()
            if not line.strip():
                return 0  # EOF or an empty line: no more jobs
            number += 1
            code = run_job(json.loads(line), number, state, idle_fd)
            results.write(json.dumps({"rc": code}) + "\n")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the parent is gone
        return 1


if __name__ == "__main__":
    sys.exit(main())
