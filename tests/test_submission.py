"""The submission: every test id once, in months, from the stack; refused when incomplete."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.data.layout import DatasetPaths
from src.utils.errors import DataError
from src.utils.io import read_id_csv


def _dataset(tmp_path, preds: dict) -> tuple:
    root = tmp_path / "data"
    root.mkdir()
    work = DatasetPaths(root).work_dir()
    (work / "stack").mkdir(parents=True)
    pd.DataFrame({"id": ["7", "8", "9"], "path": "x.png", "male": [True, False, True], "boneage": np.nan}).to_csv(
        work / "test.csv", index=False)
    pd.DataFrame({"id": list(preds), "pred": list(preds.values())}).to_csv(work / "stack" / "test.csv", index=False)
    return root, work


def test_submission_has_every_test_id_in_months(tmp_path, cli_main):
    root, work = _dataset(tmp_path, {"9": 120.5, "7": 30.0, "8": 200.25})
    out = tmp_path / "submission" / "submission.csv"
    assert cli_main(["submit", "--input", str(root), "--out", str(out)]) == 0
    sub = read_id_csv(out)
    assert list(sub.columns) == ["id", "boneage"] and list(sub["id"]) == ["7", "8", "9"]
    assert np.allclose(sub["boneage"], [30.0, 200.25, 120.5])


def test_submission_is_refused_with_a_missing_id_or_a_nan(tmp_path, cli_main, capsys):
    from src.ensemble.submission import build_submission

    root, work = _dataset(tmp_path, {"7": 30.0, "9": 120.0})
    out = tmp_path / "submission.csv"
    assert cli_main(["submit", "--input", str(root), "--out", str(out)]) == 2
    assert "lacks 1 of the 3 test ids" in capsys.readouterr().err and not out.exists()
    pd.DataFrame({"id": ["7", "8", "9"], "pred": [1.0, np.nan, 3.0]}).to_csv(work / "stack" / "test.csv", index=False)
    with pytest.raises(DataError, match="NaN"):
        build_submission(work / "test.csv", work / "stack" / "test.csv")
    (work / "stack" / "test.csv").unlink()
    with pytest.raises(DataError, match="stack"):
        build_submission(work / "test.csv", work / "stack" / "test.csv")
