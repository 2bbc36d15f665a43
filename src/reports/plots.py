"""The report's figures, drawn on matplotlib's Agg canvas (never pyplot: no display, no global
backend switch that could disturb another command in the same process) and saved atomically.

Every axis is in months (the unit of the label files); the age-bucket axis is in years, as the
buckets are."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.io import atomic_path

SEX_COLORS = {True: "#1f77b4", False: "#e6550d"}  # male blue, female orange
SEX_NAMES = {True: "male", False: "female"}
STACK_COLOR = "#111111"
DPI = 110


def signed(value: float, digits: int = 2) -> str:
    """'+1.23' / '-1.23', and never '-0.00' for a value that rounds to zero."""
    return f"{round(float(value), digits) + 0.0:+.{digits}f}"


def short(text: str, width: int = 42) -> str:
    """A name cut to `width` characters with an ellipsis, so a long experiment name never runs
    out of its panel (captions on the page carry the full name)."""
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def mae_by_bucket(table: pd.DataFrame, models: list[str], highlight: str | None, buckets: list[str]) -> Figure:
    """One panel per sex (both, male, female): OOF MAE per age bucket, one line per model, the
    highlighted one (the stack) thick and black; each tick says how many ids the bucket holds."""
    from .buckets import SEXES, bucket_counts, pivot

    fig = new_figure(12.0, 4.6)
    axes = fig.subplots(1, len(SEXES), sharey=True)
    others = [m for m in models if m != highlight]
    palette = _palette(len(others))
    x = np.arange(len(buckets))
    handles = {}
    for ax, sex in zip(axes, SEXES):
        values = pivot(table, sex, "mae", models, buckets)
        counts = bucket_counts(table, sex, buckets)
        for colour, name in zip(palette, others):
            if values[name].notna().any():
                (line,) = ax.plot(x, values[name].to_numpy(), marker="o", ms=4, lw=1.4, color=colour, label=name)
                handles.setdefault(name, line)
        if highlight in values and values[highlight].notna().any():
            (line,) = ax.plot(x, values[highlight].to_numpy(), marker="s", ms=6, lw=3.0, color=STACK_COLOR,
                              label=highlight, zorder=5)
            handles.setdefault(highlight, line)
        ax.set_xticks(x, [f"{b}\nn={counts[b]}" for b in buckets], fontsize=8.5 if len(buckets) <= 7 else 7)
        ax.set_title(f"{sex} ({int(counts.sum())} ids)" if sex != "both" else f"both sexes ({int(counts.sum())} ids)")
        ax.set_xlabel("bone age bucket (years)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("OOF MAE (months)")
    axes[0].set_ylim(bottom=0)
    names = [m for m in others if m in handles] + ([highlight] if highlight in handles else [])
    fig.legend([handles[m] for m in names], [short(m, 36) for m in names], loc="outside lower center",
               ncol=min(len(names), 5 if max(map(len, names), default=0) <= 24 else 3), fontsize=9, frameon=False)
    return fig


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _age_axes(ax, top: float) -> None:
    """Months on both axes, ticks every 2 years (24 months) so years can be read off too."""
    step = 24 if top <= 300 else 48
    ticks = np.arange(0, top + 1, step)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)


def _scatter_by_sex(ax, x, y, male) -> None:
    male = np.asarray(male, dtype=bool)
    size = 10 if len(x) > 2000 else 16
    for is_male in (True, False):
        pick = male == is_male
        if pick.any():
            ax.scatter(np.asarray(x)[pick], np.asarray(y)[pick], s=size, alpha=0.45, lw=0, color=SEX_COLORS[is_male],
                       label=f"{SEX_NAMES[is_male]} ({int(pick.sum())})")


def pred_vs_true(panels: list[tuple[str, pd.DataFrame]]) -> Figure:
    """Predicted against true bone age (one panel per prediction table), with the identity line."""
    fig = new_figure(4.8 * len(panels), 5.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    top = max(float(max(oof["boneage"].max(), oof["pred"].max())) for _, oof in panels)
    top = math.ceil(max(top, 1.0) / 24.0) * 24.0
    for ax, (title, oof) in zip(axes, panels):
        err = (oof["pred"] - oof["boneage"]).abs().mean()
        _scatter_by_sex(ax, oof["boneage"], oof["pred"], oof["male"])
        ax.plot([0, top], [0, top], color="k", lw=1, ls="--", label="identity (pred = true)")
        _age_axes(ax, top)
        ax.set_title(f"{short(title)}\nOOF MAE {err:.2f} months", fontsize=10)
        ax.set_xlabel("true bone age (months)")
        ax.set_ylabel("OOF predicted bone age (months)")
        ax.legend(loc="upper left", fontsize=8, markerscale=1.5)
    return fig


def bland_altman(title: str, oof: pd.DataFrame) -> Figure:
    """Mean of prediction and truth against their difference (pred - true), with the bias and the
    95% limits of agreement (bias +- 1.96 SD)."""
    pred, true = oof["pred"].to_numpy(dtype=float), oof["boneage"].to_numpy(dtype=float)
    mean, diff = (pred + true) / 2.0, pred - true
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    fig = new_figure(9.0, 5.0)
    ax = fig.subplots()
    _scatter_by_sex(ax, mean, diff, oof["male"])
    right = float(mean.max()) if len(mean) else 1.0
    upper, lower = bias + 1.96 * sd, bias - 1.96 * sd
    lines = [(bias, f"bias {signed(bias)}", "-"), (upper, f"+1.96 SD: {signed(upper)}", "--"),
             (lower, f"-1.96 SD: {signed(lower)}", "--")]
    for value, _, style in lines:
        ax.axhline(value, color="k", lw=1.2, ls=style)
    low, high = ax.get_ylim()
    if 1.96 * sd < 0.04 * (high - low):  # the three lines (nearly) coincide: one label, not three on top
        lines = [(bias, f"bias {signed(bias)} \u00b1 {1.96 * sd:.2f}", "-")]
    for value, text, _ in lines:
        ax.annotate(text, xy=(1.0, value), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlim(0, max(right * 1.03, 1.0))
    ax.set_xlabel("mean of OOF prediction and true bone age (months)")
    ax.set_ylabel("OOF prediction - true (months)")
    ax.set_title(f"{short(title)}: bias {signed(bias)} months, SD {sd:.2f}, 95% limits of agreement "
                 f"{signed(lower, 1)} to {signed(upper, 1)} months", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, markerscale=1.5)
    return fig


def worst_cases(cases: list[dict], ncols: int = 6) -> Figure:
    """A grid of thumbnails: each titled with id, sex, true and predicted age (months) and the
    signed error; a tile whose image could not be read says so."""
    ncols = max(1, min(ncols, len(cases)))
    nrows = max(1, math.ceil(len(cases) / ncols))
    fig = new_figure(2.1 * ncols, 2.8 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
    for ax in axes:
        ax.set_axis_off()
    for ax, case in zip(axes, cases):
        image = case.get("image")
        if image is not None:
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
        else:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=8, color="0.4",
                    transform=ax.transAxes)
            ax.set_facecolor("0.92")
        err = case["pred"] - case["true"]
        ax.set_title(f"{short(case['id'], 24)} ({SEX_NAMES[bool(case['male'])]})\n"
                     f"true {case['true']:g} mo ({case['true'] / 12:.1f} y)\n"
                     f"pred {case['pred']:.1f} mo ({signed(err, 1)})", fontsize=9)
    return fig
