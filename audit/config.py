"""How an audit log is configured: where its signing key and subject secrets live, and its pace.

The log key (Ed25519) signs receipts and checkpoints; its public half is what auditors verify
exports with. The secrets file holds 64 random bytes: the first 32 key the HMAC that turns a
subject identifier into a pseudonym for look-ups, the last 32 the AES-256-GCM key that keeps
the identifier itself readable for auditors only.
"""

from __future__ import annotations

import os
import secrets as random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from exchange.pki import generate_signing_key

SECRETS_LENGTH = 64
LOG_KEY_NAME = "audit-log"
SECRETS_FILE = "audit-log.secrets"


@dataclass(frozen=True)
class AuditConfig:
    """Key files and pacing of one audit log."""

    log_key: Path  # Ed25519 private key (PKCS8 PEM) signing receipts and checkpoints
    secrets: Path  # 64 random bytes: HMAC key for subject pseudonyms, then AES-256-GCM key
    checkpoint_interval_seconds: float = 10.0
    max_batch: int = 1024  # most entries committed in one transaction
    # Group commit: when at least `group_commit_siblings` other lookups are under way, a commit
    # waits up to this long for them to join it, less if they all have or if a quarter of it
    # passes with none joining (see AuditLog._let_others_join). 0 commits at once, always.
    group_commit_wait_ms: float = 24.0
    group_commit_siblings: int = 4

    def __post_init__(self) -> None:
        if self.checkpoint_interval_seconds <= 0:
            raise ValueError("audit.checkpoint_interval_seconds must be positive")
        if self.max_batch < 1:
            raise ValueError("audit.max_batch must be at least 1")
        if not 0 <= self.group_commit_wait_ms <= 1000:
            raise ValueError("audit.group_commit_wait_ms must be between 0 and 1000")
        if self.group_commit_siblings < 1:
            raise ValueError("audit.group_commit_siblings must be at least 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path) -> AuditConfig:
        """Read the [audit] table of a config file; relative paths are resolved from base_dir."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"audit: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
        missing = sorted({"log_key", "secrets"} - set(d))
        if missing:
            raise ValueError(f"audit: missing key(s) {', '.join(missing)}")
        return cls(
            log_key=base_dir / Path(str(d["log_key"])),
            secrets=base_dir / Path(str(d["secrets"])),
            checkpoint_interval_seconds=float(d.get("checkpoint_interval_seconds", 10.0)),
            max_batch=int(d.get("max_batch", 1024)),
            group_commit_wait_ms=float(d.get("group_commit_wait_ms", 24.0)),
            group_commit_siblings=int(d.get("group_commit_siblings", 4)),
        )

    @property
    def public_key(self) -> Path:
        """The log's public key (PEM) that `exchange audit verify --hub-key` takes."""
        return self.log_key.with_name(self.log_key.name.removesuffix(".key") + ".pub")


def create_keys(directory: Path) -> AuditConfig:
    """Write a new log key pair and secrets file into `directory` (private files 0600).

    Refuses (FileExistsError) to replace existing files: entries sealed or signed with the old
    ones would no longer open or verify.
    """
    directory.mkdir(parents=True, exist_ok=True)
    secrets_path = directory / SECRETS_FILE
    if secrets_path.exists():
        raise FileExistsError(f"{secrets_path} already exists; refusing to replace audit secrets")
    key = generate_signing_key(directory, LOG_KEY_NAME)
    fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(random.token_bytes(SECRETS_LENGTH))
        out.flush()
        os.fsync(out.fileno())
    return AuditConfig(log_key=key.private, secrets=secrets_path)
