"""Mutual TLS credentials for gRPC servers and channels, from files the local PKI writes.

Python gRPC cannot ask for a client certificate without verifying it, so the server always
requires one signed by the trusted CA: a caller with no certificate, a foreign CA or an
expired certificate fails the handshake and sees UNAVAILABLE. Who the caller is, and whether
it may call a method, is decided later from the verified certificate (exchange/identity.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

# The largest message on the exchange's channels, each way: gRPC's own default receive
# limit, set explicitly on the hub's server and its channels to the nodes.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TlsFiles:
    """The trusted CA certificate, this party's certificate and its private key (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that require and verify a client certificate issued by `files.ca`."""
    return grpc.ssl_server_credentials(
        [(files.key.read_bytes(), files.cert.read_bytes())],
        root_certificates=files.ca.read_bytes(),
        require_client_auth=True,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Channel credentials presenting `files.cert` and trusting servers issued by `files.ca`."""
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )
