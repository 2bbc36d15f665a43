"""OOF error by age bucket and sex: n, MAE, bias and 90th percentile of the absolute error.

Rules (also stated on the report page):
- edges are in years, ages in the files are in months (edge x 12);
- a bucket is [lo, hi): 24 months falls in 2-5, not 0-2; the last bucket also holds its upper
  edge, so 240 months falls in 17-20;
- a training id whose age lies outside every bucket is an error naming it (a bucket table that
  silently drops rows would understate the error of the extremes);
- every model x sex x bucket gets a row, so the table is rectangular: an empty bucket has n=0
  and NaN metrics; a sex-specific model has rows for its own sex only;
- bias is the mean signed error pred - true (positive: predicted too old); p90 is numpy's
  percentile (linear interpolation) of |pred - true|.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..utils.errors import DataError, UserError

SEXES = ("both", "male", "female")
COLUMNS = ["model", "sex", "bucket", "n", "mae", "bias", "p90"]
MAX_LISTED = 10


def parse_edges(text: str) -> list[float]:
    """`--buckets 0,2,5,...` -> strictly increasing, non-negative edges in years (at least two)."""
    try:
        edges = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError as exc:
        raise UserError(f"--buckets {text!r}: give edges in years as numbers, e.g. 0,2,5,8,11,14,17,20") from exc
    if len(edges) < 2:
        raise UserError(f"--buckets {text!r}: give at least two edges in years (one bucket), e.g. 0,2,5,8")
    if not all(math.isfinite(e) and e >= 0 for e in edges):
        raise UserError(f"--buckets {text!r}: edges must be finite, non-negative ages in years")
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise UserError(f"--buckets {text!r}: edges must be strictly increasing")
    return edges


def _fmt(edge: float) -> str:
    return f"{edge:g}"


def bucket_labels(edges: list[float]) -> list[str]:
    """['0-2', '2-5', ...] for edges [0, 2, 5, ...] (years)."""
    return [f"{_fmt(lo)}-{_fmt(hi)}" for lo, hi in zip(edges, edges[1:])]


def assign_buckets(age_months: pd.Series, edges: list[float], source: str = "the labels") -> pd.Series:
    """The bucket label of each age (months), indexed like `age_months`; an age outside every
    bucket (or missing) is a DataError naming the ids and `source`."""
    months = np.asarray(edges, dtype=float) * 12.0
    ages = pd.to_numeric(age_months, errors="coerce").to_numpy(dtype=float)
    idx = np.searchsorted(months, ages, side="right") - 1
    idx[ages == months[-1]] = len(months) - 2  # the last bucket is closed on the right
    outside = ~np.isfinite(ages) | (ages < months[0]) | (ages > months[-1])
    if outside.any():
        bad = age_months.index[outside]
        shown = ", ".join(f"{i} ({a:g} months)" for i, a in list(zip(bad, ages[outside]))[:MAX_LISTED])
        raise DataError(f"{source}: {int(outside.sum())} ids have an age outside every bucket "
                        f"{_fmt(edges[0])}-{_fmt(edges[-1])} years ({_fmt(months[0])}-{_fmt(months[-1])} months): "
                        f"{shown}; widen --buckets")
    labels = np.asarray(bucket_labels(edges), dtype=object)
    return pd.Series(labels[idx], index=age_months.index, name="bucket")


def error_metrics(pred, truth) -> dict:
    """n, MAE, bias (mean of pred - true) and p90 of |pred - true|; NaN metrics for no rows."""
    err = np.asarray(pred, dtype=float) - np.asarray(truth, dtype=float)
    if not len(err):
        return {"n": 0, "mae": math.nan, "bias": math.nan, "p90": math.nan}
    absolute = np.abs(err)
    return {"n": int(len(err)), "mae": float(absolute.mean()), "bias": float(err.mean()),
            "p90": float(np.percentile(absolute, 90))}


def entry_sexes(oof: pd.DataFrame) -> list[str]:
    """The sexes a prediction table has rows for: both+male+female, or one sex only."""
    male = oof["male"].astype(bool)
    if male.all():
        return ["male"]
    if not male.any():
        return ["female"]
    return list(SEXES)


def sex_rows(oof: pd.DataFrame, sex: str) -> pd.DataFrame:
    if sex == "both":
        return oof
    return oof[oof["male"].astype(bool) == (sex == "male")]


def bucket_table(predictions: dict[str, pd.DataFrame], edges: list[float], sexes: dict[str, list[str]] | None = None,
                 source: str = "the labels") -> pd.DataFrame:
    """Rows model, sex, bucket, n, mae, bias, p90 for every prediction table (name -> OOF rows with
    boneage, male, pred), every sex it covers (`sexes[name]`, else read from its rows) and every
    bucket (empty ones with n=0 and NaN metrics)."""
    labels = bucket_labels(edges)
    rows = []
    for name, oof in predictions.items():
        buckets = assign_buckets(oof["boneage"], edges, source)
        for sex in (sexes or {}).get(name) or entry_sexes(oof):
            part = sex_rows(oof, sex)
            for label in labels:
                chosen = part[buckets.loc[part.index] == label]
                rows.append({"model": name, "sex": sex, "bucket": label,
                             **error_metrics(chosen["pred"], chosen["boneage"])})
    return pd.DataFrame(rows, columns=COLUMNS)


def overall_table(predictions: dict[str, pd.DataFrame], sexes: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """The same metrics over all ages (bucket 'all'), for the pivot's last row."""
    rows = []
    for name, oof in predictions.items():
        for sex in (sexes or {}).get(name) or entry_sexes(oof):
            part = sex_rows(oof, sex)
            rows.append({"model": name, "sex": sex, "bucket": "all", **error_metrics(part["pred"], part["boneage"])})
    return pd.DataFrame(rows, columns=COLUMNS)


def pivot(table: pd.DataFrame, sex: str, value: str, models: list[str], buckets: list[str]) -> pd.DataFrame:
    """Rows bucket, columns model: `value` for one sex (NaN where a model has no such rows)."""
    part = table[table["sex"] == sex]
    out = part.set_index(["bucket", "model"])[value].astype(float).unstack("model")
    return out.reindex(index=buckets, columns=models)


def bucket_counts(table: pd.DataFrame, sex: str, buckets: list[str]) -> pd.Series:
    """n per bucket for one sex (the same for every model that covers that sex)."""
    part = table[table["sex"] == sex]
    return part.groupby("bucket")["n"].max().reindex(buckets).fillna(0).astype(int)
