"""`exchange demo`, run as a user runs it: a fresh directory, real servers, exit code 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_demo(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exchange.cli", "demo", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_shows_granted_and_refused_lookups_and_exits_0(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "demo ok: 8 lookups, 5 granted, 3 refused"
    assert result.stdout.count("issuer signature verified") == 5
    assert result.stdout.count("receipt verified") == 5
    assert "REFUSED  PERMISSION_DENIED: no grant for department 'SERVICE_CENTRE'" in result.stdout
    assert "REFUSED  INVALID_ARGUMENT: subject.id: check character is" in result.stdout
    assert "REFUSED  NOT_FOUND" in result.stdout
    # The auditor's report on the mother shows her two granted lookups, and the exported log
    # verifies offline.
    report = result.stdout.split("every access to the mother's data")[1].split("exported")[0]
    assert report.count("SERVICE_CENTRE  counter-07") == 2
    assert "resident_identity" in report and "marriage_certificate" in report
    assert "  ok: " in result.stdout
    # Ethnicity was asked for and is not in the grant: it must not be shown.
    assert "ethnicity" not in result.stdout.split("[3]")[0].split("[2]")[1].split("GRANTED")[1]


def test_demo_runs_again_in_the_same_directory(tmp_path: Path) -> None:
    assert run_demo(tmp_path / "demo").returncode == 0
    again = run_demo(tmp_path / "demo")
    assert again.returncode == 0, again.stdout + again.stderr


def test_demo_refuses_to_wipe_a_directory_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")

    result = run_demo(precious)

    assert result.returncode != 0
    assert "is not a demo directory" in result.stderr
    assert (precious / "thesis.txt").read_text() == "do not delete"
