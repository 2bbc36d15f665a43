"""Train folds in parallel processes (`train --jobs N`), across one or several experiments.

On a CPU, one training process with every core as a torch thread leaves cores idle (small
convolutions, the loader, the per-epoch validation). N processes, each training one fold with
cores / N threads, use them better: on 2 cores, 2 processes of 1 thread trained 1.4x the images
per second of one process of 2 threads (resnet10t, 96 px). The queue holds the folds of every
experiment given, so no core idles at the end of an experiment with an odd number of folds. A
fold's numbers do not depend on which process trains it (a test checks this), each process
writes only its own fold folder, and each experiment is merged here once its folds are done.

The N processes persist: each is a `fold_worker` (src/engine/fold_worker.py) that trains one
fold after another, given as the same `train ... --fold k --jobs 1` arguments a process of its
own would get, each fold logging to its own `fold<k>/train.log`. A fresh process per fold paid
~5.4 s of imports before training (torch 1.9 s, timm 1.9 s, albumentations 0.5 s, OpenCV,
pandas and scikit-learn 1 s): on the demo's 25 folds, about a minute of a 2-core machine. A
worker that dies fails the fold it held, and a fresh one takes the rest of the queue.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import queue as queues
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.errors import UserError
from .distributed import init_distributed
from .experiment import ExperimentPlan, plan_experiment, run_experiment

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
REPORT_EVERY_S = 60.0  # a line on the running folds' epochs
WORKER_MODULE = "src.engine.fold_worker"
EXIT_WAIT_S = 60.0  # how long a worker told to stop may take before it is killed


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


def fold_argv(train_argv: list[str], fold: int) -> list[str]:
    """The `python -m src` arguments that train one fold of an experiment: a worker's job."""
    return ["train", *train_argv, "--fold", str(fold), "--jobs", "1"]


def child_environment(jobs: int) -> dict:
    """Each child gets its share of the cores as torch/OpenMP threads."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ)
    # `python -m src` from any working directory: the project root goes first on the path
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def visible_gpus(device: str) -> list[str]:
    """The GPUs fold workers are pinned to, one each in turn (CUDA_VISIBLE_DEVICES), so `--jobs N`
    on an N-GPU machine trains one fold per GPU; none for `--device cpu` or without CUDA."""
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_environment(env: dict, slot: int, gpus: list[str]) -> dict:
    """Worker `slot`'s environment: its GPU when there are GPUs."""
    return {**env, "CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else env


class FoldWorker:
    """One `python -m src.engine.fold_worker` process, the job it holds (experiment, fold, log)
    and a thread that reads its result lines into the shared inbox as (worker, line), then
    (worker, None) at EOF, so the main loop never blocks on one worker."""

    def __init__(self, env: dict, inbox: queues.Queue, slot: int = 0):
        self.slot = slot  # which GPU (of visible_gpus) it holds, if any
        self.proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.job: tuple[ExperimentJob, int, Path] | None = None
        self.reader = threading.Thread(target=self._read, args=(inbox,), daemon=True)
        self.reader.start()

    def _read(self, inbox: queues.Queue) -> None:
        try:
            for line in self.proc.stdout:
                inbox.put((self, line))
        except (OSError, ValueError):
            pass
        inbox.put((self, None))

    def give(self, job: ExperimentJob, fold: int, log_path: Path) -> None:
        self.job = (job, fold, log_path)
        try:
            self.proc.stdin.write(json.dumps({"argv": fold_argv(job.train_argv, fold), "log": str(log_path)}) + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died: its EOF or exit code fails the job
            pass

    def stop(self) -> None:
        """No more jobs: closing its stdin makes it exit."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass


def run_folds_in_parallel(experiments: list[ExperimentJob], input_dir: str, jobs: int, folds: list[int] | None,
                          resume: bool, skip_existing: bool, device: str) -> list[Path]:
    """Plan each experiment (stale merged files removed, its cache built), train every pending
    fold of all of them in up to `jobs` worker processes, each fold logging to
    `fold<k>/train.log`, and merge each experiment as soon as its last fold is done."""
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
        log.info("training %d folds in %d worker processes (%s threads each); each fold logs to "
                 "<experiment>/fold<k>/train.log", len(queue), min(jobs, len(queue)), env["OMP_NUM_THREADS"])
    gpus = visible_gpus(device)
    inbox: queues.Queue = queues.Queue()
    active: list[FoldWorker] = []  # workers that take jobs
    stopped: list[FoldWorker] = []  # workers told to exit
    failed: list[tuple[str, int, int, Path]] = []
    start = last_report = time.monotonic()
    out_dirs: dict[str, Path] = {}
    merge_next: list[ExperimentJob] = []

    def finish(job: ExperimentJob) -> None:
        if not job.left:  # a failed fold stays in `left`: its experiment is not merged
            # every fold is done: this only merges (the skips were logged when planning)
            out_dirs[job.name] = run_experiment(job.cfg, input_dir, folds=folds, resume=resume, skip_existing=True,
                                                device=device, log_skips=False)

    def dispatch() -> None:
        """Every idle worker its next fold, fresh workers up to `jobs`, idle ones stopped once
        the queue is empty."""
        for worker in [w for w in active if w.job is None] + [None] * (jobs - len(active)):
            if not queue:
                break
            job, fold = queue.pop(0)
            if worker is None:
                slot = min(set(range(jobs)) - {w.slot for w in active})
                worker = FoldWorker(worker_environment(env, slot, gpus), inbox, slot)
                active.append(worker)
                if gpus:
                    log.info("fold worker pid %d: GPU %s", worker.proc.pid, gpus[slot % len(gpus)])
            log_path = job.plan.out_dir / f"fold{fold}" / "train.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            worker.give(job, fold, log_path)
            log.info("%s fold %d: started (worker pid %d)", job.name, fold, worker.proc.pid)
        if not queue:
            for worker in [w for w in active if w.job is None]:
                worker.stop()
                active.remove(worker)
                stopped.append(worker)

    def done(worker: FoldWorker, code: int) -> None:
        job, fold, log_path = worker.job
        worker.job = None
        minutes = (time.monotonic() - start) / 60
        if code == 0:
            log.info("%s fold %d: finished (%.1f min since start)", job.name, fold, minutes)
            job.left.discard(fold)
            merge_next.append(job)
        else:
            failed.append((job.name, fold, code, log_path))
            log.error("%s fold %d: failed with exit code %d; its log: %s", job.name, fold, code, log_path)

    def handle(worker: FoldWorker, line: str | None) -> None:
        if worker not in active:
            return  # a stopped or dead worker's last words
        if line is not None:
            try:
                code = int(json.loads(line)["rc"])
            except (ValueError, TypeError, KeyError):
                log.debug("worker pid %d: unexpected line %r", worker.proc.pid, line)
                return
            if worker.job is not None:
                done(worker, code)
            return
        died(worker)

    def died(worker: FoldWorker) -> None:
        """Its stdout closed or it exited: the fold it held fails with its exit code."""
        active.remove(worker)
        try:
            code = worker.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            code = worker.proc.wait()
        if worker.job is not None:
            log.error("fold worker pid %d exited with code %d; a fresh one takes the next fold", worker.proc.pid, code)
            done(worker, code or 1)

    def drain(timeout: float) -> None:
        """Handle the workers' lines: wait up to `timeout` for the first, then take what is there."""
        try:
            item = inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait()
            while True:
                handle(*item)
                item = inbox.get_nowait()
        except queues.Empty:
            pass

    for job in experiments:
        if not job.left:
            finish(job)  # nothing to train: merge (or re-merge) what is there
    try:
        dispatch()
        while any(w.job is not None for w in active):
            drain(0.5)
            for worker in [w for w in active if w.proc.poll() is not None]:
                worker.reader.join(2.0)  # the lines it wrote before it exited
                drain(0)
                if worker in active:
                    died(worker)
            dispatch()  # a freed worker starts its next fold before this process merges
            while merge_next:
                finish(merge_next.pop(0))
            if time.monotonic() - last_report >= REPORT_EVERY_S:
                last_report = time.monotonic()
                log.info("running: %s", "; ".join(_fold_progress(w.job[0], w.job[1]) for w in active if w.job))
    except BaseException:
        for worker in active + stopped:
            worker.stop()
            worker.proc.terminate()
        for worker in active + stopped:
            worker.proc.wait()
        raise
    for worker in active:
        worker.stop()
    for worker in active + stopped:
        try:
            worker.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
    if failed:
        tails = "\n".join(f"--- {name} fold {fold} (exit {code}), the end of {path}:\n{_tail(path)}"
                          for name, fold, code, path in failed)
        raise UserError(f"{len(failed)} fold(s) failed; finished folds are kept and a rerun resumes the rest\n{tails}")
    return [out_dirs[job.name] for job in experiments if job.name in out_dirs]


def _fold_progress(job: ExperimentJob, fold: int) -> str:
    """'<experiment> fold k epoch e/E val_mae x' from the fold's metrics.csv.

    Epochs without validation (train.val_every > 1) leave val_mae empty, so the figure shown is the
    latest one measured, named by its epoch when that is not the last epoch trained."""
    epochs = int(job.cfg["train"]["epochs"])
    try:
        with (job.plan.out_dir / f"fold{fold}" / "metrics.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        rows = []
    if not rows:
        return f"{job.name} fold {fold} starting"
    text = f"{job.name} fold {fold} epoch {rows[-1].get('epoch', '?')}/{epochs}"
    measured = [row for row in rows if (row.get("val_mae") or "").strip()]
    if measured:
        try:
            text += f" val_mae {float(measured[-1]['val_mae']):.2f}"
        except ValueError:
            return text
        if measured[-1] is not rows[-1]:
            text += f" (epoch {measured[-1].get('epoch', '?')})"
    return text


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
