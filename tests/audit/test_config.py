"""Audit configuration and key files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from audit.config import AuditConfig
from exchange.cli import main


def test_init_keys_writes_private_files_readable_by_the_owner_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "init-keys", "--dir", str(tmp_path / "keys")]) == 0
    secrets = tmp_path / "keys" / "audit-log.secrets"
    key = tmp_path / "keys" / "audit-log.sign.key"
    assert len(secrets.read_bytes()) == 64
    for private in (secrets, key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "audit-log.sign.pub").read_bytes().startswith(b"-----BEGIN")
    assert "audit-log.sign.pub" in capsys.readouterr().out
    # A second run must not replace keys that signed and sealed existing entries.
    assert main(["audit", "init-keys", "--dir", str(tmp_path / "keys")]) == 1


def test_config_from_dict_resolves_paths_and_refuses_unknown_keys(tmp_path: Path) -> None:
    config = AuditConfig.from_dict(
        {"log_key": "k/log.sign.key", "secrets": "k/s", "checkpoint_interval_seconds": 2},
        tmp_path,
    )
    assert config.log_key == tmp_path / "k" / "log.sign.key"
    assert config.public_key == tmp_path / "k" / "log.sign.pub"
    assert config.checkpoint_interval_seconds == 2.0 and config.max_batch == 1024
    with pytest.raises(ValueError, match="checkpoint_intervall"):
        AuditConfig.from_dict({"log_key": "a", "secrets": "b", "checkpoint_intervall": 1}, tmp_path)
    with pytest.raises(ValueError, match="secrets"):
        AuditConfig.from_dict({"log_key": "a"}, tmp_path)


def test_group_commit_settings_are_read_and_checked(tmp_path: Path) -> None:
    keys = {"log_key": "a", "secrets": "b"}
    config = AuditConfig.from_dict(
        {**keys, "group_commit_wait_ms": 2.5, "group_commit_siblings": 8}, tmp_path
    )
    assert (config.group_commit_wait_ms, config.group_commit_siblings) == (2.5, 8)
    assert AuditConfig.from_dict(keys, tmp_path).group_commit_wait_ms == 24.0
    with pytest.raises(ValueError, match="group_commit_wait_ms"):
        AuditConfig.from_dict({**keys, "group_commit_wait_ms": -1}, tmp_path)
    with pytest.raises(ValueError, match="group_commit_siblings"):
        AuditConfig.from_dict({**keys, "group_commit_siblings": 0}, tmp_path)
