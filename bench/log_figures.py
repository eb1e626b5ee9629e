"""The audit log's own figures for the summary: appends/s alone, export verification entries/s
and Kafka relay events/s, from bench/audit_bench.py and bench/kafka_bench.py.

Both scripts are run as they are documented (a subprocess each, bounded by a timeout) and
their printed lines are read back, so they stay free to change inside; a figure that cannot be
found is reported with the script's output instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TIMEOUT_S = 900

_APPENDS = re.compile(r"(sqlite|postgresql): ([\d,.]+) durable appends/s(.*)")
_VERIFY = re.compile(r"verify: ([\d,.]+) entries/s(.*)")
_RELAY = re.compile(r"batch_size=\s*(\d+).*=\s*([\d,.]+) events/s")


@dataclass
class LogFigures:
    """Parsed figures; `problems` holds what could not be measured, and why."""

    appends: dict[str, str] = field(default_factory=dict)  # store -> "N appends/s (detail)"
    verify: str = ""
    relay: dict[int, str] = field(default_factory=dict)  # batch size -> events/s
    problems: list[str] = field(default_factory=list)


def measure(
    postgres: str | None, appends: int, verify_entries: int, kafka_entries: int
) -> LogFigures:
    """Run both scripts; figures for SQLite and, with `postgres`, PostgreSQL as well."""
    figures = LogFigures()
    audit_args = ["--appends", str(appends), "--verify-entries", str(verify_entries)]
    if postgres:
        audit_args += ["--postgres", postgres]
    output = _run("audit_bench.py", audit_args, figures)
    for store, rate, detail in _APPENDS.findall(output):
        figures.appends[store] = f"{rate} appends/s{detail}"
    if found := _VERIFY.search(output):
        figures.verify = f"{found.group(1)} entries/s{found.group(2)}"
    if output and not (figures.appends and figures.verify):
        figures.problems.append(f"audit_bench.py printed no figures:\n{output[-1500:]}")
    kafka_args = ["--entries", str(kafka_entries), "--batch-size", "500"]
    output = _run("kafka_bench.py", kafka_args, figures)
    for batch, rate in _RELAY.findall(output):
        figures.relay[int(batch)] = rate
    if output and not figures.relay:
        figures.problems.append(f"kafka_bench.py printed no figures:\n{output[-1500:]}")
    return figures


def _run(script: str, args: list[str], figures: LogFigures) -> str:
    try:
        done = subprocess.run(
            [sys.executable, str(BENCH / script), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
            cwd=BENCH.parent,
        )
    except subprocess.TimeoutExpired:
        figures.problems.append(f"{script} did not finish within {TIMEOUT_S} s")
        return ""
    if done.returncode != 0:
        figures.problems.append(f"{script} failed ({done.returncode}):\n{done.stderr[-1500:]}")
    return done.stdout
