"""The Kaggle side: every kernel's metadata, the notebooks run headless (nbclient) from a temporary
working directory against the phantom and tiny weights, the code+weights package, and the kaggle
credentials (the package imported lazily, a readable kaggle.json warned about, never printed)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from test_predict import TOLERANCE, Workbench, build_workbench

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KERNELS = PROJECT_ROOT / "kernels"
NAMES = ("train", "submit", "inspect-oof")
REQUIRED = {"id": str, "title": str, "code_file": str, "language": str, "kernel_type": str, "is_private": bool,
            "enable_gpu": bool, "enable_internet": bool, "dataset_sources": list, "kernel_sources": list}


@pytest.fixture(scope="module")
def workbench(tmp_path_factory, tiny_phantom) -> Workbench:
    return build_workbench(tmp_path_factory.getbasetemp() / "i9-workbench", tiny_phantom)


def metadata(name: str) -> dict:
    return json.loads((KERNELS / name / "kernel-metadata.json").read_text())


# ----------------------------------------------------------------------------- metadata and notebooks


@pytest.mark.parametrize("name", NAMES)
def test_kernel_metadata_is_valid(name):
    meta = metadata(name)
    for key, kind in REQUIRED.items():
        assert isinstance(meta.get(key), kind), f"{name}: {key} should be a {kind.__name__}"
    owner, _, slug = meta["id"].partition("/")
    assert owner and re.fullmatch(r"[a-z0-9-]{3,50}", slug), meta["id"]
    assert slug == re.sub(r"[^a-z0-9]+", "-", meta["title"].lower()).strip("-")  # Kaggle derives the slug from the title
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert (KERNELS / name / meta["code_file"]).is_file() and meta["code_file"].endswith(".ipynb")
    assert "kmader/rsna-bone-age" in meta["dataset_sources"]
    assert f"{owner}/boneage-workbench-weights" in meta["dataset_sources"]
    assert all(re.fullmatch(r"[^/\s]+/[a-z0-9-]+", s) for s in meta["dataset_sources"] + meta["kernel_sources"])
    if name == "submit":
        assert meta["enable_internet"] is False
    if name == "train":
        assert meta["enable_gpu"] is True
    if name == "inspect-oof":
        assert meta["kernel_sources"] == [metadata("train")["id"]]


def test_notebooks_are_what_build_py_writes_and_call_the_package():
    import nbformat

    spec = importlib.util.spec_from_file_location("kernels_build", KERNELS / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.main(["--check"]) == 0, "kernels/ is out of date: run `python kernels/build.py`"
    for name in NAMES:
        nb = nbformat.read(KERNELS / name / metadata(name)["code_file"], as_version=4)
        nbformat.validate(nb)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        for variable, default in (("BONEAGE_INPUT", "/kaggle/input/rsna-bone-age"),
                                  ("BONEAGE_CODE", "/kaggle/input/boneage-workbench-weights"),
                                  ("BONEAGE_OUTPUT", "/kaggle/working")):
            assert f'os.environ.get("{variable}", "{default}")' in code
        assert "sys.path.insert(0, str(CODE))" in code and "from src.cli import main" in code
        assert "import torch" not in code and "class " not in code  # it calls the workbench, never copies it
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed unexecuted


def run_notebook(name: str, cwd: Path, env: dict, monkeypatch) -> "object":
    """Execute kernels/NAME headless in a fresh kernel started in `cwd` with `env` set."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the code must come from BONEAGE_CODE only
    monkeypatch.delenv("BONEAGE_WORKING", raising=False)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # Kaggle's inputs are read-only
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    cwd.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(KERNELS / name / metadata(name)["code_file"], as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, cwd / f"{name}.executed.ipynb")  # for a look after a failure
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text") or "")
            parts.extend(str(v) for k, v in (out.get("data") or {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def test_submit_notebook_runs_offline_from_the_package(workbench, tmp_path, monkeypatch):
    output = tmp_path / "kaggle-working"
    nb = run_notebook("submit", tmp_path / "elsewhere", {"BONEAGE_INPUT": workbench.root, "BONEAGE_CODE": workbench.package,
                                                         "BONEAGE_OUTPUT": output}, monkeypatch)
    text = outputs_text(nb)
    assert f"code from {(workbench.package / 'src').resolve()}" in text
    submission = pd.read_csv(output / "submission.csv", dtype={"id": str})
    test_ids = pd.read_csv(workbench.test_csv, dtype=str)["Case ID"]
    assert list(submission.columns) == ["id", "boneage"] and list(submission["id"]) == list(test_ids)
    stack = pd.read_csv(workbench.work / "stack" / "test.csv", dtype={"id": str}).set_index("id")["pred"]
    np.testing.assert_allclose(submission["boneage"], stack.loc[submission["id"]], atol=TOLERANCE)
    assert (output / "predictions.csv").is_file()
    assert not (tmp_path / "elsewhere" / "working").exists()


def test_inspect_notebook_shows_the_leaderboard_and_age_buckets(workbench, tmp_path, monkeypatch):
    output = tmp_path / "kaggle-working"
    nb = run_notebook("inspect-oof", tmp_path / "elsewhere",
                      {"BONEAGE_INPUT": workbench.root, "BONEAGE_CODE": workbench.package, "BONEAGE_OUTPUT": output,
                       "BONEAGE_RUN": workbench.working}, monkeypatch)
    text = outputs_text(nb)
    assert "| (stack) |" in text and "OOF MAE (months) by age bucket" in text and "baseline_inception_v3" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in (o.get("data") or {})]
    assert len(images) >= 3
    report = output / "workbench" / workbench.work.name / "report"
    assert (report / "age_buckets.csv").is_file() and (report / "index.html").is_file()
    assert not list((output / "workbench").rglob("*.pt")) and not (output / "workbench" / "cache").exists()


# ----------------------------------------------------------------------------- the code+weights package


def test_package_holds_code_weights_configs_and_nothing_else(workbench):
    package = workbench.package
    manifest = json.loads((package / "manifest.json").read_text())
    meta = json.loads((package / "dataset-metadata.json").read_text())
    assert meta["id"] == "tester/boneage-workbench-weights" and meta["title"] and meta["licenses"][0]["name"]
    top = {p.name for p in package.iterdir()}
    assert top == {"dataset-metadata.json", "manifest.json", "stack.json", "models", "src", "folds.csv"}
    assert (package / "src" / "cli.py").is_file() and (package / "src" / "configs" / "defaults.yaml").is_file()
    assert not list(package.rglob("__pycache__")) and not list(package.rglob("*.png"))
    assert manifest["boneage"] == "stack" and set(manifest["models"]) == {"baseline_inception_v3", "region_a_male"}
    assert manifest["registration"]["min_confidence"] == 0.5
    files = {p.relative_to(package).as_posix() for p in (package / "models").rglob("*") if p.is_file()}
    listed = {f["file"] for m in manifest["models"].values() for f in m["folds"]}
    assert files == listed | {m["config"] for m in manifest["models"].values()} and len(listed) == 2 * 3
    state = torch.load(package / sorted(listed)[0], weights_only=True)
    assert set(state) == {"model", "target", "fold", "predict_from"}  # no optimiser, no RNG state
    last = torch.load(workbench.work / "baseline_inception_v3" / "fold0" / "last.pt", weights_only=True)
    assert (package / "models/baseline_inception_v3/fold0.pt").stat().st_size < \
        (workbench.work / "baseline_inception_v3" / "fold0" / "last.pt").stat().st_size
    for key, tensor in last["model"].items():
        assert torch.equal(tensor, torch.load(package / "models/baseline_inception_v3/fold0.pt",
                                              weights_only=True)["model"][key])


def test_kaggle_package_command_checks_and_prints_its_size(workbench, cli_main, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BONEAGE_WORKING", str(workbench.working))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    out = tmp_path / "pkg"
    assert cli_main(["kaggle-package", "--input", str(workbench.root), "--out", str(out), "--check", "3",
                     "--model", "baseline_inception_v3"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"check: 3 test images .*largest difference 0\.\d+ months", printed)
    assert re.search(rf"wrote {re.escape(str(out))}: [\d.]+ (KiB|MiB) \(src ", printed)
    assert "kaggle datasets create -p" in printed
    assert json.loads((out / "manifest.json").read_text())["boneage"] == "baseline_inception_v3"
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "your-kaggle-username/boneage-workbench-weights"
    # a rebuild replaces an earlier package, but never a folder that is not one
    assert cli_main(["kaggle-package", "--input", str(workbench.root), "--out", str(out), "--check", "0"]) == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert cli_main(["kaggle-package", "--input", str(workbench.root), "--out", str(other), "--check", "0"]) == 2
    assert (other / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- kaggle credentials


def test_kaggle_package_is_imported_lazily(tmp_path):
    code = ("import sys; from src.cli import build_parser; build_parser(); "
            "import src.inference.kaggle, src.inference.package, src.commands.predict; "
            "assert 'kaggle' not in sys.modules, 'kaggle imported'")
    env = {**os.environ, "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle-config")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "kaggle-config").exists()  # nothing made a config folder


def write_credentials(folder: Path, mode: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kaggle.json"
    path.write_text(json.dumps({"username": "tester", "key": "s3cr3t-api-key"}))
    path.chmod(mode)
    return path


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_readable_kaggle_json_is_warned_about_never_printed(tmp_path, monkeypatch, caplog, capsys):
    from src.inference.kaggle import check_credentials_file

    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    path = write_credentials(tmp_path / "cfg", 0o644)
    with caplog.at_level(logging.WARNING):
        assert check_credentials_file() == path
    assert "readable by other users" in caplog.text and f"chmod 600 {path}" in caplog.text
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        check_credentials_file()
    assert not caplog.text
    captured = capsys.readouterr()
    assert "s3cr3t" not in caplog.text + captured.out + captured.err


def test_upload_goes_through_the_lazily_imported_api(tmp_path, monkeypatch, caplog, capsys):
    from src.inference import kaggle as kaggle_helpers
    from src.utils.errors import UserError

    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    write_credentials(tmp_path / "cfg", 0o640)
    calls = []

    class FakeApi:
        fail = False

        def authenticate(self):
            if FakeApi.fail:
                raise ValueError("could not read key s3cr3t-api-key")

        def dataset_create_new(self, folder, **kwargs):
            calls.append(("new", folder, kwargs))
            return types.SimpleNamespace(error=None, url="https://www.kaggle.com/datasets/tester/x")

        def dataset_create_version(self, folder, **kwargs):
            calls.append(("version", folder, kwargs))
            return types.SimpleNamespace(error=None, url="")

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FakeApi
    for name, mod in (("kaggle", types.ModuleType("kaggle")), ("kaggle.api", types.ModuleType("kaggle.api")),
                      ("kaggle.api.kaggle_api_extended", module)):
        monkeypatch.setitem(sys.modules, name, mod)
    with caplog.at_level(logging.WARNING):
        assert kaggle_helpers.upload_dataset(tmp_path, "new", "notes") == "https://www.kaggle.com/datasets/tester/x"
        kaggle_helpers.upload_dataset(tmp_path, "version", "second")
    assert calls[0][2]["dir_mode"] == "zip" and calls[1][2]["version_notes"] == "second"
    assert "readable by other users" in caplog.text  # group-readable counts too
    FakeApi.fail = True
    with pytest.raises(UserError) as err:
        kaggle_helpers.upload_dataset(tmp_path, "new", "notes")
    captured = capsys.readouterr()
    assert "s3cr3t" not in str(err.value) + caplog.text + captured.out + captured.err
