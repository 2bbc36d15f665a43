"""`python -m src.utils.timings`: run_all.sh's stage timings as JSON (atomically) and a table.

run_all.sh times each of its stages (`name=seconds` arguments) and calls this at the end, so
`working/<dataset>/run_all_timings.json` tells where a run's wall time went; the bench's
`demo_end_to_end` row reads it."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone

from .io import write_json


def parse_stage(text: str) -> dict:
    name, _, seconds = text.partition("=")
    return {"stage": name, "seconds": round(float(seconds), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.utils.timings", description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--started", type=float, required=True, help="epoch seconds at the run's start")
    parser.add_argument("--profile", default="")
    parser.add_argument("--input", default="")
    parser.add_argument("--jobs", default="")
    parser.add_argument("stages", nargs="*", help="name=seconds, in order")
    args = parser.parse_args(argv)
    stages = [parse_stage(s) for s in args.stages]
    total = time.time() - args.started
    record = {"started": datetime.fromtimestamp(args.started, timezone.utc).isoformat(timespec="seconds"),
              "profile": args.profile, "input": args.input, "jobs": args.jobs, "total_s": round(total, 1),
              "machine": platform.processor() or platform.machine(), "stages": stages}
    write_json(record, args.out)
    print(f"stage timings ({args.out}):")
    for row in stages:
        print(f"  {row['stage']:<12} {row['seconds']:>8.1f} s")
    print(f"  {'total':<12} {total:>8.1f} s ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
