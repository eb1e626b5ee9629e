"""`exchange serve`: the hub as an operator runs it, stopped by a signal, shut down cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hub_world import write_hub_config
from pki_fixture import TestPki

from exchange.tls import channel_credentials


def test_serve_runs_until_sigterm_and_stops_cleanly(tmp_path: Path, pki: TestPki) -> None:
    config = write_hub_config(tmp_path, pki)
    process = subprocess.Popen(
        [sys.executable, "-m", "exchange.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("exchange hub listening on 127.0.0.1:"):
            process.kill()
            raise AssertionError(f"no address printed: {line!r} {process.communicate()[1]}")
        address = line.rsplit(" ", 1)[1].strip()

        credentials = channel_credentials(pki.identity("inspector", "auditor", "EXCHANGE"))
        with grpc.secure_channel(address, credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            response = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING

        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "exchange hub stopping" in out
    assert (tmp_path / "exchange.db").exists()
