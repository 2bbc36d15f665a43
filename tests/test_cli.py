"""The command line: every subcommand answers --help; run_all.sh guides a user without data;
the phantom's Kaggle layout goes through intake, audit and folds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from src.cli import COMMANDS, main as cli_main
from src.data.audit import run_audit
from src.data.layout import DatasetPaths
from src.utils.io import read_id_csv
from src.data.phantom import PhantomParams, generate

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m src " + command in capsys.readouterr().out


def test_run_all_without_data_says_how_to_get_it(tmp_path):
    proc = subprocess.run(["bash", str(PROJECT_ROOT / "run_all.sh"), "--input", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "kaggle datasets download kmader/rsna-bone-age -p input --unzip" in proc.stderr
    assert "bash run_all.sh --demo" in proc.stderr


def test_run_all_rejects_unknown_arguments():
    proc = subprocess.run(["bash", str(PROJECT_ROOT / "run_all.sh"), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--bogus" in proc.stderr


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
generate(root, PhantomParams(seed=2, scale=0.06, n_train=40, n_test=0), workers=2)
result = run_audit(root, workers=2, quiet=True)
PreprocessCache('p', root, 32, [{{'name': 'resize'}}]).build(result.train, workers=2)
print('pools ok')
"""
    env = {**__import__("os").environ, "PYTHONPATH": str(PROJECT_ROOT), "BONEAGE_WORKING": str(tmp_path / "w")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0 and "pools ok" in proc.stdout, proc.stderr[-2000:]
