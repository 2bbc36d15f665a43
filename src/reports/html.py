"""The report page: one self-contained HTML file (inline CSS, no scripts, no fonts or links outside
the report folder) that opens from file:// on an offline machine. Every piece of text from the
data (model names, ids, warnings) goes through html.escape."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .buckets import SEXES, bucket_counts, pivot

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1240px;
       padding: 16px 24px 48px; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
p.meta { color: #555; margin-top: 0; }
.note { background: #f4f7fb; border-left: 4px solid #5b8def; padding: 8px 12px; margin: 12px 0; }
.warn { background: #fff6e5; border-left: 4px solid #e6a100; padding: 8px 12px; margin: 12px 0; }
nav a { margin-right: 14px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { border: 1px solid #d6d6d6; padding: 3px 8px; }
th { background: #f0f0f0; font-weight: 600; vertical-align: bottom; max-width: 11em; overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.txt { text-align: left; white-space: nowrap; }
tr.total td { border-top: 2px solid #888; font-weight: 600; }
td.best { background: #dff3df; }
.stack { background: #f7f7f7; }
th.stack { background: #e2e2e2; }
figure { margin: 16px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #444; font-size: 14px; max-width: 70em; margin-top: 4px; }
.pivots { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #1a4fb5; }
small { color: #666; }
"""


@dataclass
class Figure:
    file: str  # relative to the report folder
    title: str
    caption: str
    anchor: str


@dataclass
class Page:
    dataset: str
    input_dir: str
    generated: str
    models: list[tuple[str, str]]  # (name, sex)
    stack_name: str | None  # the stack's model name in the tables; None when it is left out
    stack_note: str
    leaderboard: pd.DataFrame | None
    leaderboard_note: str
    buckets: pd.DataFrame  # model, sex, bucket, n, mae, bias, p90
    overall: pd.DataFrame  # the same over all ages (bucket 'all')
    bucket_labels: list[str]
    edges: list[float]
    csv_file: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings met while building the report


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _breakable(name: str) -> str:
    """Escaped, with a line-break opportunity after each underscore, so long model names wrap in
    narrow table headers instead of widening the table."""
    return esc(name).replace("_", "_<wbr>")


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value))


def fmt_number(column: str, value) -> str:
    """2 decimals for errors in months, 3 for stack weights, integers as they are, blank for NaN
    (the leaderboard's own markdown rules)."""
    if _is_nan(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if column == "n" and float(value).is_integer():
            return str(int(value))
        return f"{value:.3f}" if column.startswith("stack_weight") else f"{value:.2f}"
    return str(value)


def leaderboard_table(table: pd.DataFrame, stack_name: str | None) -> str:
    head = "".join(f"<th>{_breakable(c)}</th>" for c in table.columns)
    rows = []
    best = {}
    if "oof_mae" in table and len(table):
        best["oof_mae"] = pd.to_numeric(table["oof_mae"], errors="coerce").min()
    for _, row in table.iterrows():
        cells = []
        for column in table.columns:
            value = row[column]
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            cls = "num" if numeric else "txt"
            if column in best and numeric and not _is_nan(value) and value == best[column]:
                cls += " best"
            cells.append(f'<td class="{cls}">{esc(fmt_number(column, value) if numeric else value)}</td>')
        extra = ' class="stack"' if stack_name is not None and str(row.get("model")) == stack_name else ""
        rows.append(f"<tr{extra}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            f"</table></div>")


def pivot_table(page: Page, sex: str, value: str, models: list[str]) -> str:
    """Rows: age buckets plus 'all ages'; columns: n, then one per model that covers `sex`."""
    covering = [m for m in models if ((page.buckets["model"] == m) & (page.buckets["sex"] == sex)).any()]
    if not covering:
        return f"<p><small>No model covers {'both sexes' if sex == 'both' else esc(sex) + ' ids'}.</small></p>"
    values = pivot(page.buckets, sex, value, covering, page.bucket_labels)
    counts = bucket_counts(page.buckets, sex, page.bucket_labels)
    overall = page.overall[page.overall["sex"] == sex].set_index("model")
    head = ["<th>age (years)</th>", "<th>n</th>"]
    for m in covering:
        cls = ' class="stack"' if m == page.stack_name else ""
        head.append(f"<th{cls}>{_breakable(m)}</th>")
    body = []
    lines = [(b, counts[b], values.loc[b]) for b in page.bucket_labels]
    lines.append(("all ages", int(overall["n"].max()) if len(overall) else 0,
                  overall[value].reindex(covering) if len(overall) else pd.Series(dtype=float)))
    for label, n, row in lines:
        # the lowest MAE / p90, or the bias nearest zero, of the row is shaded
        finite = pd.to_numeric(row, errors="coerce").dropna()
        best = (finite.abs() if value == "bias" else finite).idxmin() if len(finite) > 1 else None
        cells = [f'<td class="txt">{esc(label)}</td>', f'<td class="num">{int(n)}</td>']
        for m in covering:
            v = row.get(m, math.nan)
            text = "" if _is_nan(v) else (f"{v:+.2f}" if value == "bias" else f"{v:.2f}")
            cls = "num" + (" best" if m == best else "") + (" stack" if m == page.stack_name and m != best else "")
            cells.append(f'<td class="{cls}">{esc(text) if text else "&ndash;"}</td>')
        row_class = ' class="total"' if label == "all ages" else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


SHORT_NAMES = {"mae": "OOF MAE (months)", "bias": "OOF bias (months)", "p90": "OOF p90 of |error| (months)"}
VALUE_NAMES = {"mae": "MAE (months)", "bias": "bias, mean of prediction - true (months)",
               "p90": "90th percentile of |prediction - true| (months)"}


def bucket_section(page: Page) -> str:
    models = list(dict.fromkeys(page.buckets["model"]))
    parts = []
    for value in ("mae", "bias", "p90"):
        blocks = []
        for sex in SEXES:
            title = "both sexes" if sex == "both" else sex
            blocks.append(f"<div><h3>{esc(title)}: {esc(SHORT_NAMES[value])}</h3>"
                          f"{pivot_table(page, sex, value, models)}</div>")
        grid = f'<div class="pivots">{"".join(blocks)}</div>'
        if value == "mae":
            parts.append(f"<p>OOF {esc(VALUE_NAMES[value])} by bone-age bucket. Shaded: the best in the row "
                         f"(for the bias: the nearest zero). "
                         f"&ndash; marks an empty bucket (n=0). The stack's column is grey.</p>{grid}")
        else:
            parts.append(f"<details><summary>OOF {esc(VALUE_NAMES[value])} by bucket</summary>{grid}</details>")
    return "".join(parts)


LEADERBOARD_COLUMNS = {
    "kind": "model, mean (the simple mean of the models), stack, or mean_predictor (each fold predicted by its "
            "training folds' mean age: the floor any model must beat)",
    "n": "OOF rows scored",
    "oof_mae": "OOF MAE over those rows (months)",
    "oof_mae_male": "the same, boys only", "oof_mae_female": "girls only",
    "fold_mae_mean": "mean of the per-fold MAEs", "fold_mae_sd": "their standard deviation over folds",
    "oof_mae_no_tta": "OOF MAE without test-time augmentation",
    "stack_weight": "the model's weight in the stack (row-weighted mean over the per-sex stacks, if any)",
    "stack_weight_male": "its weight in the boys' stack", "stack_weight_female": "in the girls' stack",
}


def render(page: Page) -> str:
    edges = ", ".join(f"{e:g}" for e in page.edges)
    models = ", ".join(esc(n) + (f" <small>({esc(s)} only)</small>" if s != "both" else "") for n, s in page.models)
    nav = ['<a href="#leaderboard">Leaderboard</a>', '<a href="#buckets">Error by age</a>']
    nav += [f'<a href="#{esc(f.anchor)}">{esc(f.title)}</a>' for f in page.figures]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>OOF report: {esc(page.dataset)}</title><style>{CSS}</style></head><body>",
        f"<h1>Bone-age OOF report: {esc(page.dataset)}</h1>",
        f'<p class="meta">input <code>{esc(page.input_dir)}</code> &middot; generated {esc(page.generated)}'
        f" by <code>python -m src report</code></p>",
        f"<nav>{' '.join(nav)}</nav>",
        '<div class="note"><b>Every figure on this page is out-of-fold (OOF):</b> each training image is predicted '
        "by the model of the fold that held it out, never by one that trained on it. Ages and errors are in "
        "<b>months</b>; buckets are in <b>years</b>. Error = prediction &minus; true (positive: predicted too "
        "old).</div>",
        f"<p><b>Models:</b> {models}.<br><b>Stack:</b> {esc(page.stack_note)}</p>",
    ]
    if page.notes:
        items = "".join(f"<li>{esc(n)}</li>" for n in page.notes)
        out.append(f'<div class="warn"><b>Warnings while building this report:</b><ul>{items}</ul></div>')
    out.append('<h2 id="leaderboard">Leaderboard</h2>')
    out.append(f"<p>{esc(page.leaderboard_note)} OOF MAE in months, sorted by <code>oof_mae</code>; "
               f"the best is shaded.</p>")
    out.append(leaderboard_table(page.leaderboard, page.stack_name) if page.leaderboard is not None
               else "<p><small>No leaderboard.</small></p>")
    if page.leaderboard is not None:
        known = [(c, text) for c, text in LEADERBOARD_COLUMNS.items() if c in page.leaderboard.columns]
        if any(c.startswith("test_mae_") for c in page.leaderboard.columns):
            known.append(("test_mae_*", "MAE on the test labels named after the underscore (not OOF)"))
        items = "; ".join(f"<code>{esc(c)}</code>: {esc(text)}" for c, text in known)
        out.append(f"<p><small>{items}.</small></p>")
    out.append('<h2 id="buckets">OOF error by age bucket</h2>')
    out.append(f"<p>Bucket edges {esc(edges)} years. A bucket holds ages from its lower edge up to, but not "
               f"including, its upper edge (24 months is in 2-5); the last bucket includes its upper edge. "
               f"Empty buckets are kept with n=0 and no metrics. A sex-specific model appears under its own sex "
               f"only. All figures, per model, sex and bucket: "
               f'<a href="{esc(page.csv_file)}">{esc(page.csv_file)}</a> (columns model, sex, bucket, n, mae, '
               f"bias, p90).</p>")
    out.append(bucket_section(page))
    for fig in page.figures:
        out.append(f'<h2 id="{esc(fig.anchor)}">{esc(fig.title)}</h2>')
        out.append(f'<figure><img src="{esc(fig.file)}" alt="{esc(fig.title)}">'
                   f"<figcaption>{esc(fig.caption)}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)
