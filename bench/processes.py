"""Server processes the benchmark starts: each on loopback, its output in a log file, ready once
it prints its "listening" line, stopped with SIGTERM (then SIGKILL) at the end.

Separate processes keep the load generator off the servers' GIL, as real clients would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The installed `exchange` command next to this interpreter (the virtualenv's), as an operator
# would run it; `python -m exchange.cli` where it is not installed as a script.
_SCRIPT = Path(sys.executable).with_name("exchange")
EXCHANGE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "exchange.cli"]
START_TIMEOUT_S = 60.0


class ServerProcess:
    """One server process, started by `start`, ready when its log shows `ready`."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, ready: str, address: str = ""
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.ready = ready
        self.address = address  # host:port it serves on, where the caller knows it
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (after start)."""
        assert self._process is not None, f"{self.name} was not started"
        return self._process.pid

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        """Start the process and wait until it is listening; RuntimeError with its log if not."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=_environment()
            )
        deadline = time.monotonic() + timeout
        while self.ready not in self.log_path.read_text("utf-8", errors="replace"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.tail()}")
            time.sleep(0.05)
        return self

    def tail(self, characters: int = 3000) -> str:
        """The end of the process's log."""
        return self.log_path.read_text("utf-8", errors="replace")[-characters:]

    def rss_mib(self) -> float:
        """Resident set size (VmRSS) of the process now, in MiB."""
        return rss_mib(self.pid)

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the process has used so far."""
        return cpu_seconds(self.pid)

    def loop_cpu_seconds(self) -> float:
        """CPU time its main thread (the event loop's) has used so far."""
        return cpu_seconds(self.pid, thread=self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it has not ended within `timeout`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def rss_mib(pid: int) -> float:
    """VmRSS of process `pid` from /proc, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} reports no VmRSS")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of process `pid` (or of its thread `thread`) from /proc."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    # The command name (field 2) may hold spaces; the fields after it are space-separated.
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    # The servers must import this checkout whatever the working directory.
    root = str(Path(__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, environment.get("PYTHONPATH", "")) if p
    )
    return environment


def hub_process(config: Path, log_path: Path, name: str = "hub") -> ServerProcess:
    """`exchange serve --config CONFIG`."""
    return ServerProcess(
        name, [*EXCHANGE, "serve", "--config", str(config)], log_path, "hub listening on"
    )


def adapter_process(config: Path, log_path: Path) -> ServerProcess:
    """`exchange adapter serve --config CONFIG`."""
    return ServerProcess(
        "adapter",
        [*EXCHANGE, "adapter", "serve", "--config", str(config)],
        log_path,
        "listening on",
    )
