"""The bench's outputs: `bench.json` (machine + rows, each with name, ours, reference, unit,
ratio, target) and `bench.md` (the same as a table), written atomically."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ..utils.io import write_json, write_text
from .measure import Row


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"


def markdown(rows: list[Row], machine: dict, quick: bool) -> str:
    met = {True: "yes", False: "**no**", None: "-"}
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
             f"({machine['torch_threads']} threads, {machine['cpu_capability']}, native bf16: "
             f"{'yes' if machine['native_bf16'] else 'no'}){' - QUICK smoke run: not a measurement' if quick else ''}",
             "",
             "| row | ours | reference | unit | ratio | target | met | images x repeats |",
             "|---|---:|---:|---|---:|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.name} | {_fmt(row.ours)} | {_fmt(row.reference)} | {row.unit} | {row.ratio:.2f}x | "
                     f"{row.target} | {met[row.met]} | {row.images} x {row.repeats} |")
    lines.append("")
    for row in rows:
        lines.append(f"- **{row.name}**: ours = {row.ours_what}; reference = {row.reference_what}."
                     + (f" {row.notes}." if row.notes else ""))
    return "\n".join(lines) + "\n"


def write(rows: list[Row], machine: dict, out_dir: Path, quick: bool, settings: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": quick,
              "machine": machine, "settings": settings, "rows": [row.as_dict() for row in rows]}
    json_path = write_json(record, out_dir / "bench.json")
    md_path = write_text("# Bench\n\n" + markdown(rows, machine, quick), out_dir / "bench.md")
    return Path(json_path), Path(md_path)
