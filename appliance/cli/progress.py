"""What `appliance backfill` prints: the one-line summary of a finished run and
the progress line of a running one (symbols, months of 1m, chunks, flat files)."""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from appliance.core.units import eta_text, human_bytes


@contextlib.contextmanager
def logs_above(prog) -> Iterator[None]:
    """While rich's progress bar ``prog`` is live on the terminal, log lines
    are printed above it: the log handlers wrote to the terminal's stderr
    directly, through the bar, which the next refresh then drew again in the
    middle of them. rich redirects ``sys.stderr`` while it is live; the
    handlers are pointed at that for as long."""
    swapped = []
    if prog.live.is_started:
        for h in logging.getLogger().handlers:
            if type(h) is logging.StreamHandler and h.stream is not sys.stderr:
                swapped.append((h, h.setStream(sys.stderr)))
    try:
        yield
    finally:
        for h, old in swapped:
            h.setStream(old)


def summary_line(res: dict) -> str:
    keys = ("status", "plan", "symbols", "symbols_ok", "inserted", "updated", "revised",
            "rejected", "requests", "retries", "duration_s")
    line = ", ".join(f"{k}={res[k]}" for k in keys if k in res)
    m = res.get("minutes")
    if m and "requests_planned" in m:
        line += (f"\n1m: {m['requests_planned']} month(s) fetched, {m.get('sessions', 0)} "
                 f"session(s), {m.get('bars', 0)} bars")
    f = res.get("files")
    if f:
        line += (f"\nflat files: {f['done']} of {f['total']} ingested ({f['failed']} failed), "
                 f"{human_bytes(f['bytes'])}, {f['rows']} rows, {f['bars']} bars")
    if res.get("failed"):
        line += "\nfailed: " + "; ".join(f"{k}: {v}" for k, v in res["failed"].items())
    return line


def progress_line(data: dict) -> tuple[int, int, str] | None:
    """(total, done, text) of a backfill's progress report: symbols for daily
    bars, months for minute bars, with the estimated time of arrival."""
    if data.get("phase") == "waiting":
        return (0, 0, data.get("message") or "waiting")
    current = f" {data['current']}" if data.get("current") else ""
    if data.get("files_total"):
        return (data["chunks_total"], data["chunks_done"] + data.get("chunks_failed", 0),
                f"chunks: {data['files_done']}/{data['files_total']} flat files "
                f"({data.get('files_failed', 0)} failed), "
                f"{human_bytes(data.get('file_bytes', 0))}, {data.get('file_rows', 0)} rows, "
                f"{data.get('symbols_total', 0)} symbols by REST, "
                f"{eta_text(data.get('eta_s'))}")
    if "chunks_total" in data:
        months = (f", {data['minute_months_done']}/{data['minute_months_total']} months of 1m"
                  if data.get("minute_months_total") else "")
        return (data["chunks_total"], data["chunks_done"] + data.get("chunks_failed", 0),
                f"chunks ({data.get('symbols_total', 0)} symbols{months}), "
                f"{data.get('bars', 0) + data.get('minute_bars', 0)} bars, "
                f"{data.get('requests', 0)} requests, {eta_text(data.get('eta_s'))}")
    if "months_total" in data:
        return (data["months_total"], data["months_done"],
                f"months of 1m, {data.get('bars', 0)} bars, {data.get('requests', 0)} requests, "
                f"{eta_text(data.get('eta_s'))}{current}")
    if "symbols_total" in data:
        return (data["symbols_total"], data["symbols_done"],
                f"symbols, {data.get('rows', 0)} rows, {data.get('requests', 0)} requests, "
                f"{eta_text(data.get('eta_s'))}{current}")
    return None
