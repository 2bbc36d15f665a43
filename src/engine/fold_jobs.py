"""Train folds in parallel processes (`train --jobs N`), across one or several experiments.

On a CPU, one training process with every core as a torch thread leaves cores idle (small
convolutions, the loader, the per-epoch validation). N processes, each training one fold with
cores / N threads, use them better: on 2 cores, 2 processes of 1 thread trained 1.4x the images
per second of one process of 2 threads (resnet10t, 96 px). The queue holds the folds of every
experiment given, so no core idles at the end of an experiment with an odd number of folds. A
fold's numbers do not depend on which process trains it (a test checks this), each process
writes only its own fold folder, and each experiment is merged here once its folds are done.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.errors import UserError
from .distributed import init_distributed
from .experiment import ExperimentPlan, plan_experiment, run_experiment

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
REPORT_EVERY_S = 60.0  # a line on the running folds' epochs


@dataclass
class ExperimentJob:
    """One experiment to train: its resolved config and its child's `train` arguments (no fold
    or jobs flags). `--force` stays in them: a child's fold is one this run decided to retrain."""

    cfg: dict
    train_argv: list[str]
    plan: ExperimentPlan | None = None
    left: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.plan.out_dir.name if self.plan else str(self.cfg.get("name"))


def fold_command(train_argv: list[str], fold: int) -> list[str]:
    return [sys.executable, "-m", "src", "train", *train_argv, "--fold", str(fold), "--jobs", "1"]


def child_environment(jobs: int) -> dict:
    """Each child gets its share of the cores as torch/OpenMP threads."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ)
    # `python -m src` from any working directory: the project root goes first on the path
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def run_folds_in_parallel(experiments: list[ExperimentJob], input_dir: str, jobs: int, folds: list[int] | None,
                          resume: bool, skip_existing: bool, device: str) -> list[Path]:
    """Plan each experiment (stale merged files removed, its cache built), train every pending
    fold of all of them in up to `jobs` child processes, each logging to `fold<k>/train.log`, and
    merge each experiment as soon as its last fold is done."""
    dist, dev = init_distributed(device)
    if dist.enabled:
        raise UserError("--jobs runs folds as separate processes; under torchrun use --jobs 1")
    env = child_environment(jobs)
    queue: list[tuple[ExperimentJob, int]] = []
    for job in experiments:
        job.plan = plan_experiment(job.cfg, input_dir, folds, skip_existing, dist, dev)
        workers = int(job.cfg["data"]["num_workers"])
        if workers > 1:  # each child its share of the loader workers (a run-control key: same fingerprint)
            job.train_argv = [*job.train_argv, f"data.num_workers={max(1, workers // jobs)}"]
        job.left = set(job.plan.train_now)
        queue += [(job, fold) for fold in job.plan.train_now]
    if queue:
        log.info("training %d folds in up to %d processes (%s threads each); each fold logs to "
                 "<experiment>/fold<k>/train.log", len(queue), min(jobs, len(queue)), env["OMP_NUM_THREADS"])
    running: dict[tuple[str, int], tuple[subprocess.Popen, ExperimentJob, Path]] = {}
    failed: list[tuple[str, int, int, Path]] = []
    start = last_report = time.monotonic()
    out_dirs: dict[str, Path] = {}

    def finish(job: ExperimentJob) -> None:
        if not job.left:  # a failed fold stays in `left`: its experiment is not merged
            # every fold is done: this only merges (the skips were logged when planning)
            out_dirs[job.name] = run_experiment(job.cfg, input_dir, folds=folds, resume=resume, skip_existing=True,
                                                device=device, log_skips=False)

    for job in experiments:
        if not job.left:
            finish(job)  # nothing to train: merge (or re-merge) what is there
    try:
        while queue or running:
            while queue and len(running) < jobs:
                job, fold = queue.pop(0)
                log_path = job.plan.out_dir / f"fold{fold}" / "train.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "ab") as sink:
                    proc = subprocess.Popen(fold_command(job.train_argv, fold), stdout=sink,
                                            stderr=subprocess.STDOUT, env=env)
                running[(job.name, fold)] = (proc, job, log_path)
                log.info("%s fold %d: started (pid %d)", job.name, fold, proc.pid)
            time.sleep(0.5)
            if time.monotonic() - last_report >= REPORT_EVERY_S:
                last_report = time.monotonic()
                log.info("running: %s", "; ".join(_fold_progress(job, fold) for (_, fold), (_, job, _) in running.items()))
            for key, (proc, job, log_path) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[key]
                fold = key[1]
                minutes = (time.monotonic() - start) / 60
                if code == 0:
                    log.info("%s fold %d: finished (%.1f min since start)", job.name, fold, minutes)
                    job.left.discard(fold)
                    finish(job)
                else:
                    failed.append((job.name, fold, code, log_path))
                    log.error("%s fold %d: failed with exit code %d; its log: %s", job.name, fold, code, log_path)
    except KeyboardInterrupt:
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.wait()
        raise
    if failed:
        tails = "\n".join(f"--- {name} fold {fold} (exit {code}), the end of {path}:\n{_tail(path)}"
                          for name, fold, code, path in failed)
        raise UserError(f"{len(failed)} fold(s) failed; finished folds are kept and a rerun resumes the rest\n{tails}")
    return [out_dirs[job.name] for job in experiments if job.name in out_dirs]


def _fold_progress(job: ExperimentJob, fold: int) -> str:
    """'<experiment> fold k epoch e/E val_mae x' from the fold's metrics.csv (its last epoch)."""
    epochs = int(job.cfg["train"]["epochs"])
    try:
        lines = (job.plan.out_dir / f"fold{fold}" / "metrics.csv").read_text().strip().splitlines()
        row = dict(zip(lines[0].split(","), lines[-1].split(",")))
        return f"{job.name} fold {fold} epoch {row['epoch']}/{epochs} val_mae {float(row['val_mae']):.2f}"
    except (OSError, IndexError, KeyError, ValueError):
        return f"{job.name} fold {fold} starting"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
