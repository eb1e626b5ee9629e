"""The local PKI: files on disk, what the certificates say, and mutual TLS over real sockets."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from pki_fixture import TestPki

from exchange import pki as exchange_pki
from exchange.errors import translate_errors
from exchange.identity import Role, identity_from_context
from exchange.pki import (
    generate_signing_key,
    init_ca,
    issue_identity,
    key_id_for,
    load_public_key_raw,
    load_signing_key,
)
from exchange.tls import TlsFiles, channel_credentials, server_credentials

WHOAMI = "/test.Whoami/Get"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- files and certificate contents -----------------------------------------------------------


def test_private_keys_are_readable_by_owner_only(pki: TestPki, tmp_path: Path) -> None:
    identity = pki.identity("civil-affairs", "department", "MZJ")
    signing = generate_signing_key(tmp_path, "MZJ")
    assert mode(pki.dir / "ca" / "ca.key") == 0o600
    assert mode(identity.key) == 0o600
    assert mode(signing.private) == 0o600


def test_identity_certificate_names_holder_department_and_role(pki: TestPki) -> None:
    certificate = load(pki.identity("hub", "hub", "EXCHANGE").cert)

    subject = certificate.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hub"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "EXCHANGE"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "hub"
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hub", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA256)


def test_extra_hosts_become_subject_alternative_names(tmp_path: Path) -> None:
    init_ca(tmp_path)
    files = issue_identity(
        tmp_path, tmp_path, "adapter-1", "adapter", "GAJ", hosts=("10.1.2.3", "gaj.gov.test")
    )
    sans = load(files.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["adapter-1", "gaj.gov.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]


def test_chain_verifies_for_client_and_server_use(pki: TestPki) -> None:
    store = Store([load(pki.ca)])
    leaf = load(pki.identity("hub", "hub", "EXCHANGE").cert)
    policy = PolicyBuilder().store(store)

    client = policy.build_client_verifier().verify(leaf, [])
    assert client.subjects is not None
    assert x509.DNSName("hub") in client.subjects
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = policy.build_server_verifier(name).verify(leaf, [])
        assert chain[-1] == load(pki.ca)


def test_foreign_and_expired_certificates_do_not_verify(pki: TestPki) -> None:
    verifier = PolicyBuilder().store(Store([load(pki.ca)])).build_client_verifier()
    with pytest.raises(VerificationError):
        verifier.verify(load(pki.foreign_identity("intruder", "department", "MZJ").cert), [])
    with pytest.raises(VerificationError):
        verifier.verify(load(pki.expired_identity("civil-affairs", "department", "MZJ").cert), [])


def test_refuses_to_replace_an_existing_ca(tmp_path: Path) -> None:
    first = init_ca(tmp_path).cert.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to replace an existing CA"):
        init_ca(tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == first


def test_rejects_names_unsafe_as_file_or_host_names(tmp_path: Path) -> None:
    init_ca(tmp_path)
    with pytest.raises(ValueError, match="must be 1-63 letters"):
        issue_identity(tmp_path, tmp_path, "../evil", "department", "MZJ")


def test_signing_key_round_trips_and_has_stable_key_id(tmp_path: Path) -> None:
    files = generate_signing_key(tmp_path, "GAJ")
    raw = load_public_key_raw(files.public)
    key = load_signing_key(files.private)

    assert len(raw) == 32
    assert files.key_id == key_id_for(raw)
    assert len(files.key_id) == 16
    signature = key.sign(b"document bytes")
    key.public_key().verify(signature, b"document bytes")  # raises if the pair does not match
    with pytest.raises(FileExistsError):
        generate_signing_key(tmp_path, "GAJ")


# --- mutual TLS over a real gRPC server ---------------------------------------------------------


async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    async with translate_errors(context):
        identity = identity_from_context(context)
        return "|".join(
            [
                identity.name,
                identity.department,
                identity.role.value,
                str(identity.serial),
                identity.fingerprint,
                identity.not_after.isoformat(),
            ]
        ).encode()
    raise AssertionError("unreachable: translate_errors aborts")


@pytest.fixture(scope="module")
async def server_port(pki: TestPki) -> AsyncIterator[int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Whoami", {"Get": grpc.unary_unary_rpc_method_handler(whoami)}
            )
        ]
    )
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.identity("hub", "hub", "EXCHANGE"))
    )
    await server.start()
    yield port
    await server.stop(None)


async def call(port: int, credentials: grpc.ChannelCredentials) -> bytes:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        answer: bytes = await channel.unary_unary(WHOAMI)(b"", timeout=10)
        return answer


async def test_server_sees_the_callers_identity(pki: TestPki, server_port: int) -> None:
    files = pki.identity("civil-affairs", "department", "MZJ")
    certificate = load(files.cert)

    answer = await call(server_port, channel_credentials(files))

    name, department, role, serial, fingerprint, not_after = answer.decode().split("|")
    assert (name, department, role) == ("civil-affairs", "MZJ", Role.DEPARTMENT)
    assert int(serial) == certificate.serial_number
    assert fingerprint == certificate.fingerprint(hashes.SHA256()).hex()
    assert dt.datetime.fromisoformat(not_after) == certificate.not_valid_after_utc


async def test_unknown_role_is_unauthenticated(pki: TestPki, server_port: int) -> None:
    files = pki.identity("cleaner", "janitor", "MZJ")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(server_port, channel_credentials(files))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "client certificate has unknown role 'janitor'"


@pytest.mark.parametrize("kind", ["foreign CA", "expired", "no certificate"])
async def test_handshake_refuses_untrusted_clients(
    pki: TestPki, server_port: int, kind: str
) -> None:
    if kind == "foreign CA":
        credentials = channel_credentials(pki.foreign_identity("intruder", "department", "MZJ"))
    elif kind == "expired":
        credentials = channel_credentials(pki.expired_identity("old", "department", "MZJ"))
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(server_port, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_refuses_a_server_from_another_ca(pki: TestPki, tmp_path: Path) -> None:
    init_ca(tmp_path / "other")
    impostor = issue_identity(tmp_path / "other", tmp_path, "hub", "hub", "EXCHANGE")
    server = grpc.aio.server()
    port = server.add_secure_port(
        "127.0.0.1:0",
        server_credentials(TlsFiles(ca=pki.ca, cert=impostor.cert, key=impostor.key)),
    )
    await server.start()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(
                port, channel_credentials(pki.identity("civil-affairs", "department", "MZJ"))
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


# --- exchange pki ... ---------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """`exchange.cli.main(argv)`; until every CLI module exists, a parser with only `pki`."""
    try:
        from exchange.cli import build_parser, main

        build_parser()
    except ModuleNotFoundError:
        parser = argparse.ArgumentParser(prog="exchange")
        exchange_pki.add_cli(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        code: int = args.run(args)
        return code
    return main(argv)


def test_cli_creates_ca_identity_and_signing_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "pki"
    assert run_cli(["pki", "init", "--dir", str(directory)]) == 0
    assert capsys.readouterr().out.split() == [str(directory / "ca.pem"), str(directory / "ca.key")]

    argv = ["pki", "issue", "--dir", str(directory), "--name", "hub", "--role", "hub"]
    argv += ["--department", "EXCHANGE", "--host", "hub.test", "--host", "::1", "--days", "30"]
    assert run_cli(argv) == 0
    assert capsys.readouterr().out.split() == [
        str(directory / "hub.pem"),
        str(directory / "hub.key"),
    ]
    certificate = load(directory / "hub.pem")
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hub", "hub.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == dt.timedelta(days=30)
    assert mode(directory / "hub.key") == 0o600

    assert run_cli(["pki", "signing-key", "--dir", str(directory), "--name", "GAJ"]) == 0
    lines = capsys.readouterr().out.splitlines()
    raw = load_public_key_raw(directory / "GAJ.sign.pub")
    assert lines == [
        str(directory / "GAJ.sign.key"),
        str(directory / "GAJ.sign.pub"),
        f"key id: {key_id_for(raw)}",
    ]


def test_cli_offers_only_known_roles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["pki", "issue", "--dir", str(tmp_path), "--name", "x", "--role", "janitor"]
    with pytest.raises(SystemExit) as exit_:
        run_cli([*argv, "--department", "MZJ"])
    assert exit_.value.code == 2
    assert "invalid choice: 'janitor'" in capsys.readouterr().err
