"""The headline rows (bench/burst.py): jobs due together, beside APScheduler, with the targets."""

from __future__ import annotations

from typing import Any

Table = tuple[str, list[str], list[list[str]]]


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _n(value: Any, fmt: str = ".2f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "n/a"


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def _status(result: Any, *names: str) -> int:
    statuses = _get(result, "statuses") or {}
    return sum(int(statuses.get(n, 0)) for n in names)


def _err(result: Any) -> str | None:
    return (
        "failed: " + str(result["error"])[:160].replace("|", "/")
        if isinstance(result, dict) and "error" in result
        else None
    )


def _not_run(result: Any) -> int:
    return int(_get(result, "expected") or 0) - int(_get(result, "executions") or 0)


def _case(label: str, ours: Any, aps: Any, figure: str, key: tuple[str, ...], fmt: str) -> list[str]:
    mine, theirs = _get(ours, *key), _get(aps, *key)
    return [
        label,
        figure,
        _err(ours) or _n(mine, fmt),
        _err(aps) or (_n(theirs, fmt) if aps else "-"),
        _ratio(mine, theirs),
    ]


def tables(results: dict[str, Any]) -> list[Table]:
    h = results.get("headline")
    if not h:
        return []
    rows: list[list[str]] = []
    b, s, c, m = (h.get(k) or {} for k in ("burst", "second", "cluster", "minute"))
    if b:
        o, a = b.get("ours"), b.get("apscheduler")
        n = _get(o, "jobs")
        rows.append(
            _case(
                f"1. {n:,} jobs due together, SQLite",
                o,
                a,
                "last start after the slot (s)",
                ("last_start_s",),
                ".2f",
            )
        )
        rows.append(_case("", o, a, "p50 start after the slot (ms)", ("lateness", "p50_ms"), ".0f"))
        rows.append(
            [
                "",
                "executed / recorded succeeded",
                f"{_get(o, 'executions')} / {_status(o, 'succeeded')} of {_get(o, 'expected')}",
                f"{_get(a, 'executions')} of {_get(a, 'expected')}",
                "",
            ]
        )
    if s:
        o, a = s.get("ours"), s.get("apscheduler")
        rows.append(
            _case(
                f"2. {_get(o, 'jobs'):,} one-second jobs, {_get(o, 'slots')} slots",
                o,
                a,
                "p99 lateness (ms)",
                ("lateness", "p99_ms"),
                ".0f",
            )
        )
        rows.append(_case("", o, a, "p50 lateness (ms)", ("lateness", "p50_ms"), ".0f"))
        rows.append(
            [
                "",
                "missed + skipped / not executed",
                f"{_status(o, 'missed', 'skipped')} / {_not_run(o)}",
                f"- / {_not_run(a)}",
                "",
            ]
        )
    if c:
        o = c.get("ours")
        rows.append(
            [
                f"3. PostgreSQL, 3 instances, {_get(o, 'jobs'):,} jobs",
                "burst drained: last start (s)",
                _err(o) or _n(_get(o, "last_start_s")),
                "-",
                "",
            ]
        )
        rows.append(
            [
                "",
                "duplicates / missed / share per instance (%)",
                f"{_get(o, 'duplicates')} / {_status(o, 'missed')} / {_get(o, 'share_percent')}",
                "-",
                "",
            ]
        )
    if m:
        o, a = m.get("ours"), m.get("apscheduler")
        rows.append(
            _case(
                f"4. {_get(o, 'jobs'):,} jobs every 60 s",
                o,
                a,
                "CPU in the quiet part (%)",
                ("quiet_cpu_percent",),
                ".1f",
            )
        )
        rows.append(_case("", o, a, "peak RSS (MB)", ("peak_rss_mb",), ".0f"))
        rows.append(_case("", o, a, "spawn to ready to claim (s)", ("ready_s",), ".1f"))
    gaps = [_get(r.get("ours"), "max_heartbeat_gap_s") for r in (b, s, c, m) if r]
    incidents = [len(_get(r.get("ours"), "incidents") or []) for r in (b, s, c, m) if r]
    rows.append(
        [
            "5. all of the above",
            "longest heartbeat gap (s) / incidents opened",
            f"{_n(max((g for g in gaps if isinstance(g, float)), default=None))} / {sum(incidents)}",
            "-",
            "",
        ]
    )
    header = ["Case", "Figure", "ours", "APScheduler 3.11", "ours / APScheduler"]
    return [("Headline: jobs due together (lateness measured inside the job body)", header, rows)]


def targets(results: dict[str, Any], lease_ttl: float = 10.0) -> list[tuple[str, str, str]]:
    h = results.get("headline")
    if not h:
        return []
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**NOT met**")

    b = h.get("burst") or {}
    o, a = b.get("ours"), b.get("apscheduler")
    last, peer = _get(o, "last_start_s"), _get(a, "last_start_s")
    all_ok = _get(o, "executions") == _get(o, "expected") == _status(o, "succeeded")
    ok = None if last is None else bool(all_ok and last <= 1.0 and (peer is None or last <= peer))
    out.append(
        (
            "1. burst: all succeeded, last start <= 1.0 s and <= APScheduler's",
            f"{_n(last)} s vs {_n(peer)} s",
            verdict(ok),
        )
    )
    s = h.get("second") or {}
    o, a = s.get("ours"), s.get("apscheduler")
    p99, peer = _get(o, "lateness", "p99_ms"), _get(a, "lateness", "p99_ms")
    lost = _status(o, "missed", "skipped")
    ok = None if p99 is None else bool(lost == 0 and (peer is None or p99 <= peer))
    out.append(
        (
            "2. one-second jobs: 0 missed or skipped, p99 <= APScheduler's",
            f"{lost} lost, p99 {_n(p99, '.0f')} vs {_n(peer, '.0f')} ms",
            verdict(ok),
        )
    )
    o = (h.get("cluster") or {}).get("ours")
    shares = _get(o, "share_percent") or []
    last = _get(o, "last_start_s")
    ok = (
        None
        if last is None
        else bool(
            _get(o, "duplicates") == 0
            and _status(o, "missed") == 0
            and last <= 2.0
            and len(shares) == 3
            and all(20 <= x <= 50 for x in shares)
        )
    )
    out.append(
        (
            "3. cluster: 0 duplicates, 0 missed, drained <= 2 s, each 20-50 %",
            f"{_get(o, 'duplicates')} dup, drained {_n(last)} s, shares {shares}",
            verdict(ok),
        )
    )
    o = (h.get("minute") or {}).get("ours")
    cpu, rss, ready = _get(o, "quiet_cpu_percent"), _get(o, "peak_rss_mb"), _get(o, "ready_s")
    ok = None if cpu is None else bool(cpu < 1.0 and (rss or 999) <= 120 and (ready or 99) <= 2.0)
    out.append(
        (
            "4. 10,000 every 60 s: quiet CPU < 1 %, peak RSS <= 120 MB, ready <= 2 s",
            f"{_n(cpu, '.1f')} %, {_n(rss, '.0f')} MB, {_n(ready, '.1f')} s",
            verdict(ok),
        )
    )
    rows = [r.get("ours") for r in h.values() if isinstance(r, dict)]
    gaps = [g for g in (_get(r, "max_heartbeat_gap_s") for r in rows) if isinstance(g, float)]
    incidents = sum(len(_get(r, "incidents") or []) for r in rows)
    ok = None if not gaps else bool(max(gaps) <= lease_ttl / 3 and incidents == 0)
    out.append(
        (
            "5. no heartbeat later than TTL / 3, no incident",
            f"longest gap {_n(max(gaps, default=None))} s, {incidents} incidents",
            verdict(ok),
        )
    )
    return out
