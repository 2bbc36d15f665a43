"""The command line: every subcommand answers --help; run_all.sh guides a user without data;
the phantom's Kaggle layout goes through intake, audit and folds."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.cli import COMMANDS, main as cli_main
from src.data.audit import run_audit
from src.data.layout import DatasetPaths
from src.utils.io import read_id_csv
from src.utils.progress import INTERVAL_ENV, progress
from src.data.phantom import PhantomParams, generate

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m src " + command in capsys.readouterr().out


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_only_meaningful_defaults(command, capsys):
    with pytest.raises(SystemExit):
        cli_main(([command] if command else []) + ["--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "default: None" not in text and "default: False" not in text and "default: True" not in text
    if command == "phantom":
        assert "(default: 1000)" in text  # a real default is still shown
        assert "(default: one per CPU core)" in text and f"(default: {os.cpu_count()})" not in text


def _kaggle_executable() -> str:
    beside = Path(sys.executable).parent / ("kaggle.exe" if os.name == "nt" else "kaggle")
    found = str(beside) if beside.is_file() else shutil.which("kaggle")
    if not found:
        pytest.fail("the kaggle CLI from requirements.txt is not installed (no `kaggle` beside python or on PATH)")
    return found


def test_installed_kaggle_cli_starts(tmp_path):
    """The download command in the README needs a kaggle CLI that starts: kaggle 2.2.4 imports
    `six` without declaring it, so requirements.txt pins six. Runs the installed entry point;
    --version needs no credentials or network (dummy ones keep the user's real ones out of it)."""
    env = {**os.environ, "KAGGLE_CONFIG_DIR": str(tmp_path), "KAGGLE_USERNAME": "ci-dummy",
           "KAGGLE_KEY": "0" * 32}
    env.pop("KAGGLE_API_TOKEN", None)
    proc = subprocess.run([_kaggle_executable(), "--version"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"\d+\.\d+\.\d+", proc.stdout + proc.stderr), proc.stdout


def _bar_lines(monkeypatch, interval: float | None, n: int = 50) -> tuple[list[str], float]:
    if interval is None:
        monkeypatch.delenv(INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(INTERVAL_ENV, str(interval))
    log = io.StringIO()  # not a tty, like a log file
    started = time.monotonic()
    bar = progress(range(n), desc="train", leave=False, file=log)
    for i in bar:  # the training loop's pattern: a postfix every step, without a redraw
        time.sleep(0.003)
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}", refresh=False)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text  # plain lines, no carriage returns or cursor moves
    return text.splitlines(), time.monotonic() - started


def test_progress_in_a_log_file_is_a_few_lines_with_the_real_count(monkeypatch):
    interval = 0.05
    lines, elapsed = _bar_lines(monkeypatch, interval)  # >= 0.15 s of work: a few timed lines
    assert 2 <= len(lines) <= elapsed / interval + 2, (elapsed, lines)  # one per interval, not one per step
    counts = [int(re.search(r"(\d+)/50", line).group(1)) for line in lines]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # the count moves, never repeats
    assert "50/50" in lines[-1] and "loss=" in lines[-1]  # a final line, even with leave=False
    default, _ = _bar_lines(monkeypatch, None)  # 30 s by default: the first and the final line only
    assert len(default) == 2 and "0/50" in default[0] and "50/50" in default[-1]


def test_run_all_names_a_missing_folder_and_an_unknown_profile(tmp_path):
    run_all = str(PROJECT_ROOT / "run_all.sh")
    proc = subprocess.run(["bash", run_all, "--input", "/no/such/dir"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "'/no/such/dir' does not exist" in proc.stderr
    proc = subprocess.run(["bash", run_all, "--profile", "gpu"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown profile 'gpu'" in proc.stderr and "cpu demo full" in proc.stderr


def test_run_all_without_data_says_how_to_get_it(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(["bash", str(PROJECT_ROOT / "run_all.sh"), "--input", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "kaggle datasets download kmader/rsna-bone-age -p input --unzip" in proc.stderr
    assert "bash run_all.sh --demo" in proc.stderr


def test_run_all_rejects_unknown_arguments():
    proc = subprocess.run(["bash", str(PROJECT_ROOT / "run_all.sh"), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--bogus" in proc.stderr


def test_run_all_smoke_demo_runs_its_stages_and_times_each(tmp_path):
    """The whole script on a tiny phantom (--demo --smoke: 1 epoch, the baseline only): it exits
    0 and writes each stage's wall time, in order, to run_all_timings.json. OMP_NUM_THREADS=1 in
    the caller's shell does not cut the demo's default of 2 fold processes on a 2-core machine
    (GNU nproc honours it: such a run trained 1 fold at a time, with epochs sized for 1)."""
    import json

    env = {**os.environ, "BONEAGE_WORKING": str(tmp_path / "working"), "PHANTOM_TRAIN": "60", "PHANTOM_TEST": "4",
           "PHANTOM_SCALE": "0.05", "SMOKE_LIMIT": "60", "OMP_NUM_THREADS": "1"}
    root = tmp_path / "phantom"
    proc = subprocess.run(["bash", str(PROJECT_ROOT / "run_all.sh"), "--demo", "--smoke", "--input", str(root),
                           "--device", "cpu"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    timings = json.loads((DatasetPaths(root).work_dir() / "run_all_timings.json").read_text())
    cores = len(os.sched_getaffinity(0))
    assert int(timings["jobs"]) == (2 if cores >= 2 else 1), (timings["jobs"], cores)
    assert f"at a time on {cores} cores" in proc.stdout
    assert [row["stage"] for row in timings["stages"]] == ["phantom", "audit", "folds", "train"]
    assert all(row["seconds"] >= 0 for row in timings["stages"]) and timings["profile"] == "demo"
    assert sum(row["seconds"] for row in timings["stages"]) <= timings["total_s"] + 1
    assert "stage timings" in proc.stdout


def test_phantom_kaggle_layout_goes_through_intake_audit_and_folds(tmp_path):
    root = tmp_path / "phantom"
    generate(root, PhantomParams(seed=1, scale=0.08, n_train=60, n_test=6), workers=1)
    result = run_audit(root, quiet=True)
    assert len(result.train) == 60 and len(result.test) == 6
    assert result.test["boneage"].notna().all()  # test labels merged from boneage-test-labels.csv
    assert set(result.train.columns) >= {"id", "path", "male", "boneage"}
    assert cli_main(["folds", "--input", str(root)]) == 0
    folds = read_id_csv(DatasetPaths(root).work_dir() / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4] and set(folds["id"]) == set(result.train["id"])


def test_worker_pools_start_after_torch_threads_without_deadlock(tmp_path):
    """Pools forked from a process with running OpenMP threads can hang; ours must not."""
    script = f"""
import torch
torch.set_num_threads(2)
x = torch.randn(512, 512)
for _ in range(5):
    x = torch.tanh(x @ x)
from src.data.phantom import PhantomParams, generate
from src.data.audit import run_audit
from src.data.cache import PreprocessCache
root = {str(tmp_path / 'p')!r}
generate(root, PhantomParams(seed=2, scale=0.06, n_train=40, n_test=2), workers=2)
result = run_audit(root, workers=2, quiet=True)
PreprocessCache('p', root, 32, [{{'name': 'resize'}}]).build(result.train, workers=2)
print('pools ok')
"""
    env = {**__import__("os").environ, "PYTHONPATH": str(PROJECT_ROOT), "BONEAGE_WORKING": str(tmp_path / "w")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0 and "pools ok" in proc.stdout, proc.stderr[-2000:]
