"""Certificate lifecycle: the CA's index, renewal, revocation, the published CRL, and checks of
callers against it on a real mutual-TLS server, taking effect without a restart.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exchange.ca_index import CertificateAuthority, CertificateIndex, Status, parse_serial
from exchange.cli import main
from exchange.errors import ExchangeError, translate_errors
from exchange.identity import Identity, identity_from_context, identity_from_pem
from exchange.pki import init_ca, issue_identity, renew_identity
from exchange.revocation import RevocationList, check_certificate, revoke_certificates
from exchange.tls import TlsFiles, channel_credentials, server_credentials

WHOAMI = "/test.Whoami/Get"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def crl_serials(ca_dir: Path) -> set[int]:
    crl = x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())
    return {entry.serial_number for entry in crl}


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    init_ca(directory)
    return directory


# --- the index and renewal ---------------------------------------------------------------------


def test_a_new_ca_publishes_an_empty_crl_it_signed(ca_dir: Path) -> None:
    crl = x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())
    assert len(crl) == 0
    assert crl.is_signature_valid(load(ca_dir / "ca.pem").public_key())  # type: ignore[arg-type]
    assert RevocationList(ca_dir / "ca.crl", ca_dir / "ca.pem").revoked == frozenset()


def test_the_index_records_each_certificate_issued(ca_dir: Path, tmp_path: Path) -> None:
    files = issue_identity(ca_dir, tmp_path / "out", "mca-case", "department", "MCA", days=30)
    certificate = load(files.cert)

    (record,) = CertificateIndex(ca_dir).records()
    assert (record.name, record.role, record.department) == ("mca-case", "department", "MCA")
    assert record.serial == certificate.serial_number
    assert record.not_after == certificate.not_valid_after_utc
    assert record.hosts == ("localhost", "127.0.0.1")
    assert Path(record.certificate) == files.cert.resolve()
    assert record.status(dt.datetime.now(dt.UTC)) is Status.VALID
    copy = ca_dir / "issued" / f"{record.serial_hex}.pem"
    assert copy.read_bytes() == files.cert.read_bytes()


def test_renewal_keeps_subject_and_sans_with_a_new_key_and_serial(
    ca_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    files = issue_identity(ca_dir, out, "psb-adapter", "adapter", "PSB", ("10.0.0.7", "psb.test"))
    old = load(files.cert)
    old_key = files.key.read_bytes()

    renewed, previous = renew_identity(ca_dir, name="psb-adapter", days=90)

    new = load(renewed.cert)
    assert renewed.cert == files.cert and renewed.key == files.key  # written in place
    assert previous.serial == old.serial_number
    assert new.subject == old.subject
    assert new.serial_number != old.serial_number
    sans = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["psb-adapter", "psb.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert new.not_valid_after_utc - new.not_valid_before_utc == dt.timedelta(days=90)
    assert renewed.key.read_bytes() != old_key
    assert _public_der(new) != _public_der(old)
    # The previous certificate stays valid until it expires, so holders can switch over.
    statuses = {
        r.serial: r.status(dt.datetime.now(dt.UTC)) for r in CertificateIndex(ca_dir).records()
    }
    assert statuses == {old.serial_number: Status.VALID, new.serial_number: Status.VALID}


def test_renewal_can_keep_the_key_and_revoke_the_previous(ca_dir: Path, tmp_path: Path) -> None:
    files = issue_identity(ca_dir, tmp_path, "hub", "hub", "EXCHANGE")
    old = load(files.cert)

    renewed, _ = renew_identity(
        ca_dir,
        serial=old.serial_number,
        new_key=False,
        out_dir=tmp_path / "v2",
        revoke_previous=True,
    )

    new = load(renewed.cert)
    assert renewed.cert == tmp_path / "v2" / "hub.pem"
    assert _public_der(new) == _public_der(old)
    assert crl_serials(ca_dir) == {old.serial_number}
    (record,) = CertificateIndex(ca_dir).find(serial=old.serial_number)
    assert (record.status(dt.datetime.now(dt.UTC)), record.reason) == (Status.REVOKED, "superseded")


def test_renewal_by_a_name_two_holders_share_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    issue_identity(ca_dir, tmp_path / "a", "counter", "department", "MCA")
    issue_identity(ca_dir, tmp_path / "b", "counter", "department", "HRSS")
    with pytest.raises(ValueError, match="several holders are named 'counter'"):
        renew_identity(ca_dir, name="counter")


def test_a_revoked_certificate_cannot_be_renewed(ca_dir: Path, tmp_path: Path) -> None:
    files = issue_identity(ca_dir, tmp_path, "counter", "department", "MCA")
    serial = load(files.cert).serial_number
    revoke_certificates(ca_dir, serial=serial, reason="key_compromise")

    with pytest.raises(ValueError, match="is revoked; issue a new identity instead"):
        renew_identity(ca_dir, serial=serial)
    assert len(CertificateIndex(ca_dir).find(name="counter")) == 1


@pytest.mark.parametrize("revoked_one", ["first", "renewal"])
def test_a_key_revoked_as_compromised_is_revoked_in_every_certificate_of_it(
    ca_dir: Path, tmp_path: Path, revoked_one: str
) -> None:
    # The first certificate is only valid for a moment: by the revocation it has expired.
    soon = dt.datetime.now(dt.UTC) - dt.timedelta(days=1) + dt.timedelta(seconds=1)
    files = issue_identity(
        ca_dir, tmp_path, "counter", "department", "MCA", days=1, not_before=soon
    )
    first = load(files.cert).serial_number
    renewed, _ = renew_identity(
        ca_dir, serial=first, days=30, new_key=False, out_dir=tmp_path / "v2"
    )
    second = load(renewed.cert).serial_number
    other = load(issue_identity(ca_dir, tmp_path / "o", "other", "department", "MCA").cert)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)

    target = first if revoked_one == "first" else second
    revoked = revoke_certificates(ca_dir, serial=target, reason="key_compromise", now=later)

    # Every certificate of the key goes, the expired one too; another key's stays.
    assert {r.serial for r in revoked} == {first, second}
    assert crl_serials(ca_dir) == {first, second}
    assert other.serial_number not in crl_serials(ca_dir)
    # So no renewal can certify the compromised key again.
    with pytest.raises(ValueError, match="this CA holds no unrevoked certificate named 'counter'"):
        renew_identity(ca_dir, name="counter", new_key=False)


# --- revocation and the CRL --------------------------------------------------------------------


def test_revoking_by_name_revokes_every_unexpired_certificate_of_that_name(
    ca_dir: Path, tmp_path: Path
) -> None:
    first = load(issue_identity(ca_dir, tmp_path / "1", "mca-case", "department", "MCA").cert)
    second = load(issue_identity(ca_dir, tmp_path / "2", "mca-case", "department", "MCA").cert)
    other = load(issue_identity(ca_dir, tmp_path / "3", "hrss", "department", "HRSS").cert)

    revoked = revoke_certificates(ca_dir, name="mca-case", reason="key_compromise")

    assert {r.serial for r in revoked} == {first.serial_number, second.serial_number}
    crl = x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())
    assert {e.serial_number for e in crl} == {first.serial_number, second.serial_number}
    entry = crl.get_revoked_certificate_by_serial_number(first.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert other.serial_number not in {e.serial_number for e in crl}
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 2  # the CA's empty CRL was number 1


def test_revoking_what_the_ca_never_issued_names_the_problem(ca_dir: Path) -> None:
    with pytest.raises(ValueError, match="issued no certificate named 'ghost'"):
        revoke_certificates(ca_dir, name="ghost")
    with pytest.raises(ValueError, match=r"serial abc is not in .*this CA did not issue it"):
        revoke_certificates(ca_dir, serial=0xABC)
    assert crl_serials(ca_dir) == set()


def test_a_revocation_list_rereads_the_crl_only_when_it_changes(
    ca_dir: Path, tmp_path: Path
) -> None:
    files = issue_identity(ca_dir, tmp_path, "mca-case", "department", "MCA")
    serial = load(files.cert).serial_number
    revocations = RevocationList(ca_dir / "ca.crl", ca_dir / "ca.pem")
    assert not revocations.is_revoked(serial)
    assert revocations.refresh() is False  # unchanged file: nothing re-read

    revoke_certificates(ca_dir, serial=serial)

    assert revocations.is_revoked(serial)  # the next check sees it, no restart
    assert revocations.refresh() is False


def test_an_older_crl_put_back_does_not_un_revoke(ca_dir: Path, tmp_path: Path) -> None:
    files = issue_identity(ca_dir, tmp_path, "mca-case", "department", "MCA")
    serial = load(files.cert).serial_number
    before = (ca_dir / "ca.crl").read_bytes()  # signed by our CA, listing nobody
    revocations = RevocationList(ca_dir / "ca.crl", ca_dir / "ca.pem")
    revoke_certificates(ca_dir, serial=serial)
    assert revocations.is_revoked(serial)

    (ca_dir / "ca.crl").write_bytes(before)
    os.utime(ca_dir / "ca.crl", ns=(1, 1))  # and its change is seen

    assert revocations.is_revoked(serial)


def test_a_crl_not_signed_by_our_ca_is_refused_then_ignored(ca_dir: Path, tmp_path: Path) -> None:
    files = issue_identity(ca_dir, tmp_path, "mca-case", "department", "MCA")
    serial = load(files.cert).serial_number
    impostor = tmp_path / "impostor"
    init_ca(impostor, common_name="Once-Only Exchange local CA")  # same name, other key
    issue_identity(impostor, tmp_path / "x", "mca-case", "department", "MCA")
    revocations = RevocationList(ca_dir / "ca.crl", ca_dir / "ca.pem")
    revoke_certificates(ca_dir, serial=serial)
    assert revocations.is_revoked(serial)

    # Someone swaps in a CRL that un-revokes everything; it does not verify, so the last
    # good list stays in force.
    (ca_dir / "ca.crl").write_bytes((impostor / "ca.crl").read_bytes())
    assert revocations.is_revoked(serial)
    with pytest.raises(ValueError, match="not signed by the trusted CA"):
        RevocationList(ca_dir / "ca.crl", ca_dir / "ca.pem")


def test_a_missing_crl_is_an_error_only_when_required(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RevocationList(tmp_path / "none.crl", ca_dir / "ca.pem")
    optional = RevocationList(tmp_path / "later.crl", ca_dir / "ca.pem", required=False)
    files = issue_identity(ca_dir, tmp_path, "mca-case", "department", "MCA")
    serial = load(files.cert).serial_number
    assert not optional.is_revoked(serial)
    revoke_certificates(ca_dir, serial=serial)
    (tmp_path / "later.crl").write_bytes((ca_dir / "ca.crl").read_bytes())
    assert optional.is_revoked(serial)


def test_check_certificate_refuses_revoked_and_expired(ca_dir: Path, tmp_path: Path) -> None:
    files = issue_identity(ca_dir, tmp_path, "mca-case", "department", "MCA", days=1)
    identity = identity_from_pem(files.cert.read_bytes())
    revocations = RevocationList(ca_dir / "ca.crl", ca_dir / "ca.pem")
    now = dt.datetime.now(dt.UTC)

    check_certificate(identity, revocations, now)  # valid: no error
    with pytest.raises(ExchangeError) as expired:
        check_certificate(identity, revocations, identity.not_after)
    assert expired.value.status is grpc.StatusCode.UNAUTHENTICATED
    assert expired.value.message == (
        f"certificate {identity.serial:x} expired at {identity.not_after.isoformat()}"
    )
    revoke_certificates(ca_dir, name="mca-case")
    with pytest.raises(ExchangeError) as revoked:
        check_certificate(identity, revocations, now)
    assert revoked.value.status is grpc.StatusCode.UNAUTHENTICATED
    assert revoked.value.message == f"certificate {identity.serial:x} is revoked"


@pytest.mark.parametrize(
    ("doubled", "message"),
    [
        (NameOID.ORGANIZATION_NAME, "client certificate has 2 O (department), not one"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "client certificate has 2 OU (role), not one"),
    ],
    ids=["two-departments", "two-roles"],
)
def test_a_certificate_naming_two_departments_or_roles_identifies_nobody(
    ca_dir: Path, doubled: x509.ObjectIdentifier, message: str
) -> None:
    # As an organisation's CA may issue: which O or OU counts must not depend on their order.
    names = {
        NameOID.COMMON_NAME: ["mca-counter-1"],
        NameOID.ORGANIZATION_NAME: ["MCA"],
        NameOID.ORGANIZATIONAL_UNIT_NAME: ["department"],
    }
    names[doubled] = [*names[doubled], "NHC" if doubled == NameOID.ORGANIZATION_NAME else "admin"]
    ca = CertificateAuthority.at(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(o, v) for o, vs in names.items() for v in vs]))
        .issuer_name(ca.load_certificate().subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca.load_key(), hashes.SHA256())
    )

    with pytest.raises(ExchangeError) as refused:
        identity_from_pem(certificate.public_bytes(serialization.Encoding.PEM))
    assert refused.value.status is grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.message == message


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_renews_revokes_and_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(directory)]) == 0
    for name, role, department in (("hub", "hub", "EXCHANGE"), ("mca", "department", "MCA")):
        argv = ["pki", "issue", "--dir", str(directory), "--name", name, "--role", role]
        assert main([*argv, "--department", department]) == 0
    first_mca = load(directory / "mca.pem").serial_number
    assert main(["pki", "renew", "--dir", str(directory), "--name", "mca", "--days", "30"]) == 0
    renewed = load(directory / "mca.pem").serial_number
    capsys.readouterr()

    serial_text = format(first_mca, "X")  # upper case, as OpenSSL prints it
    assert main(["pki", "revoke", "--dir", str(directory), "--serial", serial_text]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"revoked {first_mca:x} mca (department, MCA)", str(directory / "ca.crl")]

    assert main(["pki", "list", "--dir", str(directory)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["NAME", "ROLE", "DEPARTMENT", "SERIAL", "NOT_AFTER", "STATUS"]
    by_serial = {parse_serial(row[3]): (row[0], row[5]) for row in rows[1:]}
    assert by_serial[first_mca] == ("mca", "revoked")
    assert by_serial[renewed] == ("mca", "valid")
    assert sorted(by_serial.values()) == [("hub", "valid"), ("mca", "revoked"), ("mca", "valid")]


def test_cli_revoke_of_an_unknown_name_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["pki", "init", "--dir", str(tmp_path)])
    assert main(["pki", "revoke", "--dir", str(tmp_path), "--name", "nobody"]) == 1
    assert "this CA has issued no certificate named 'nobody'" in capsys.readouterr().err


def test_cli_will_not_issue_over_the_cas_own_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["pki", "init", "--dir", str(tmp_path)])
    ca_key = (tmp_path / "ca.key").read_bytes()
    arguments = ["pki", "issue", "--dir", str(tmp_path), "--name", "ca"]
    assert main([*arguments, "--role", "department", "--department", "MCA"]) == 1
    assert "is the CA's own file; choose another name" in capsys.readouterr().err
    assert (tmp_path / "ca.key").read_bytes() == ca_key
    assert (
        load(tmp_path / "ca.pem").extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    )


# --- a real server: revocation takes effect on the next call of an open channel ----------------


def checking_whoami(revocations: RevocationList) -> grpc.RpcMethodHandler:
    """A method answering the caller's name, after the check the hub's gate makes."""

    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async with translate_errors(context):
            identity: Identity = identity_from_context(context)
            check_certificate(identity, revocations, dt.datetime.now(dt.UTC))
            return identity.name.encode()
        raise AssertionError("unreachable")

    return grpc.unary_unary_rpc_method_handler(whoami)


@pytest.fixture
async def checked_server(ca_dir: Path, tmp_path: Path) -> AsyncIterator[int]:
    revocations = RevocationList(ca_dir / "ca.crl", ca_dir / "ca.pem")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Whoami", {"Get": checking_whoami(revocations)})]
    )
    files = issue_identity(ca_dir, tmp_path / "server", "hub", "hub", "EXCHANGE")
    port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
    await server.start()
    yield port
    await server.stop(None)


async def test_a_revocation_stops_the_next_call_on_an_open_connection(
    ca_dir: Path, tmp_path: Path, checked_server: int
) -> None:
    files: TlsFiles = issue_identity(ca_dir, tmp_path / "client", "mca-case", "department", "MCA")
    serial = load(files.cert).serial_number
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{checked_server}", channel_credentials(files)
    ) as channel:
        call = channel.unary_unary(WHOAMI)
        assert await call(b"", timeout=10) == b"mca-case"

        revoke_certificates(ca_dir, name="mca-case")

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"", timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == f"certificate {serial:x} is revoked"


def _public_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_revoking_a_name_twice_says_there_is_nothing_left_to_revoke(
    ca_dir: Path, tmp_path: Path
) -> None:
    issue_identity(ca_dir, tmp_path, "mca-case", "department", "MCA")
    (first,) = revoke_certificates(ca_dir, name="mca-case")
    with pytest.raises(ValueError, match="every certificate named 'mca-case' is already revoked"):
        revoke_certificates(ca_dir, name="mca-case")
    # By serial it is idempotent: the first revocation's time and reason stand.
    (again,) = revoke_certificates(ca_dir, serial=first.serial, reason="superseded")
    assert (again.revoked_at, again.reason) == (first.revoked_at, "unspecified")
