"""`exchange adapter serve`: a real process that serves the hub and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import pytest
from adapter_world import (
    SQL_TYPE,
    ZHANG,
    adapter_client,
    fetch_request,
    write_config,
    write_database,
)
from pki_fixture import TestPki

from exchange.tls import TlsFiles
from exchange.v1 import common_pb2

COMMAND = [sys.executable, "-m", "exchange.cli", "adapter", "serve", "--config"]
# Generous bounds so a stuck process fails the test instead of hanging the suite.
STARTUP_LIMIT = 60.0


async def test_serve_answers_the_hub_and_stops_on_sigterm(
    tmp_path: Path, pki: TestPki, hub_tls: TlsFiles
) -> None:
    write_database(f"sqlite:///{tmp_path / 'psb.db'}")
    config = write_config(tmp_path, pki, 'kind = "sql"\nurl = "sqlite:///psb.db"\n' + SQL_TYPE)
    process = await asyncio.create_subprocess_exec(
        *COMMAND, str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), STARTUP_LIMIT)
        match = re.fullmatch(rb"adapter node PSB listening on 127\.0\.0\.1:(\d+)\n", line)
        if match is None:
            process.kill()
            _, stderr = await process.communicate()
            pytest.fail(f"no listening line: {line!r}; stderr: {stderr.decode()}")
        async with adapter_client(int(match.group(1)), hub_tls) as stub:
            response = await stub.Fetch(fetch_request(ZHANG, fields=("name",)))
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(process.wait(), STARTUP_LIMIT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    document = common_pb2.Document.FromString(response.document.payload)
    assert dict(document.fields) == {"name": "张伟"}
    assert exit_code == 0


async def test_serve_with_a_bad_config_says_what_is_wrong(tmp_path: Path, pki: TestPki) -> None:
    config = write_config(tmp_path, pki, 'kind = "ldap"\n')
    process = await asyncio.create_subprocess_exec(
        *COMMAND, str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), STARTUP_LIMIT)

    assert process.returncode == 1
    assert "unknown backend kind 'ldap'" in stderr.decode()
