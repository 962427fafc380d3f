"""Lateness (p50/p99) of 100 interval jobs over 60 s on this machine, ours only.

    .venv/bin/python -m bench.lateness_100 [--duration 60] [--interval 10]

The same measurement as the 100-job row of `bench.lateness` (run rows:
started_at - scheduled_for, jobs spread evenly over the interval, SQLite).
"""

from __future__ import annotations

import argparse

from bench.common import run_child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds (default 60)")
    parser.add_argument("--interval", type=float, default=10.0, help="job interval in seconds (default 10)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    params = {
        "impl": "ours",
        "jobs": 100,
        "interval": args.interval,
        "duration": args.duration,
        "db": args.db,
    }
    result = run_child("lateness", params, timeout=args.duration + 120)
    late = result["lateness"]
    print(
        f"100 jobs every {args.interval:g}s over {args.duration:g}s on {args.db}: "
        f"p50 {late['p50_ms']:.2f} ms, p99 {late['p99_ms']:.2f} ms, max {late['max_ms']:.2f} ms "
        f"({late['count']} runs, {result['not_run']} slots not run)"
    )


if __name__ == "__main__":
    main()
