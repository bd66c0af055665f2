"""A site's private certificate authority: the broker's server certificate, client
certificates and passwords for gateways and the aggregator.

Everything lives in one directory (:class:`PkiLayout`); private keys and passwords are
written mode 0600 and never overwritten, certificates 0644. A client certificate's common
name is the identity's MQTT user name (Mosquitto ``use_identity_as_username true``), so it
must be a valid gateway id. The threat model and what this stops: docs/security.md.

Errors::

    PkiError
     ├── PkiFileExists      refusing to overwrite a key, password or certificate
     └── PkiFileError       missing, unreadable, malformed or too open (key mode not 0600)
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import secrets
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.clock import Clock, SystemClock
from evidence.batch import GATEWAY_ID

CA_VALIDITY = dt.timedelta(days=3650)  # the site's life; the CA key should then go offline
SERVER_VALIDITY = dt.timedelta(days=825)  # the longest the CA/Browser Forum ever allowed
CLIENT_VALIDITY = dt.timedelta(days=825)
BACKDATE = dt.timedelta(hours=1)  # not_before slack for devices whose clocks run behind
PASSWORD_BYTES = 32  # random secret: 256 bits, so no hash stretching is needed
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class PkiError(Exception):
    """Base class of this module's errors; messages name the file."""


class PkiFileExists(PkiError):
    """The file exists: keys, passwords and certificates are never overwritten."""


class PkiFileError(PkiError):
    """A file is missing, unreadable, malformed, or a private key others may read."""


@dataclass(frozen=True, slots=True)
class PkiLayout:
    """Where each file of a site's PKI lives under ``root``."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "broker.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "broker.key"

    @property
    def clients(self) -> Path:
        return self.root / "clients"

    def client_cert(self, identity: str) -> Path:
        return self.clients / f"{check_identity(identity)}.crt"

    def client_key(self, identity: str) -> Path:
        return self.clients / f"{check_identity(identity)}.key"

    def client_password(self, identity: str) -> Path:
        return self.clients / f"{check_identity(identity)}.password"


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """The site CA: its certificate, its private key and the directory it issues into."""

    layout: PkiLayout
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate written to disk with its key."""

    subject: str
    cert_path: Path
    key_path: Path
    not_after: dt.datetime


def check_identity(identity: str) -> str:
    """A client identity is an MQTT user name and a topic level: a valid gateway id."""
    if not GATEWAY_ID.match(identity):
        raise ValueError(
            f"identity {identity!r} must match {GATEWAY_ID.pattern} (it is the MQTT user name "
            "and appears in topics and the ACL)"
        )
    return identity


def make_ca(
    directory: str | os.PathLike[str],
    *,
    name: str = "puhui site CA",
    validity: dt.timedelta = CA_VALIDITY,
    clock: Clock | None = None,
) -> CertificateAuthority:
    """Create the directory's CA (P-256 key 0600, self-signed certificate 0644)."""
    layout = PkiLayout(Path(directory))
    layout.root.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = _now(clock) - BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(layout.ca_key, key)
    _write_public(layout.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(layout, cert, key)


def load_ca(directory: str | os.PathLike[str]) -> CertificateAuthority:
    """The CA of a directory made by :func:`make_ca`; refuses a key that others may read."""
    layout = PkiLayout(Path(directory))
    cert = load_certificate(layout.ca_cert)
    key = _load_key(layout.ca_key)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise PkiFileError(f"{layout.ca_key}: does not belong to the certificate {layout.ca_cert}")
    return CertificateAuthority(layout, cert, key)


def issue_server(
    ca: CertificateAuthority,
    names: Sequence[str] = (),
    *,
    validity: dt.timedelta = SERVER_VALIDITY,
    clock: Clock | None = None,
) -> Issued:
    """The broker's certificate for ``names`` plus localhost and 127.0.0.1 (SANs)."""
    all_names = list(dict.fromkeys([*names, *DEFAULT_SERVER_NAMES]))
    sans = [_san(n) for n in all_names]
    return _issue(
        ca,
        all_names[0],
        sans,
        ExtendedKeyUsageOID.SERVER_AUTH,
        (ca.layout.server_cert, ca.layout.server_key),
        validity,
        clock,
    )


def issue_client(
    ca: CertificateAuthority,
    identity: str,
    *,
    validity: dt.timedelta = CLIENT_VALIDITY,
    clock: Clock | None = None,
) -> Issued:
    """A client certificate whose common name is ``identity`` (the MQTT user name)."""
    paths = (ca.layout.client_cert(identity), ca.layout.client_key(identity))
    ca.layout.clients.mkdir(exist_ok=True)
    return _issue(ca, identity, [], ExtendedKeyUsageOID.CLIENT_AUTH, paths, validity, clock)


def issue_password(layout: PkiLayout, identity: str) -> Path:
    """A random password for a device that cannot hold a certificate (file 0600).

    The broker's password file (:mod:`puhui.broker`) holds only its hash.
    """
    return new_password_file(layout.client_password(identity))


def new_password_file(path: Path) -> Path:
    """A random password (256 bits, URL-safe text) in a new file ``path``, mode 0600, never
    overwritten: an MQTT identity's (:func:`issue_password`) or another service's, e.g. an
    InfluxDB user's in ``puhui demo``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_secret(path, (secrets.token_urlsafe(PASSWORD_BYTES) + "\n").encode("ascii"))
    return path


def read_password(path: Path) -> str:
    """A password file written by :func:`issue_password` (refused if others may read it)."""
    return _read_secret(path).decode("ascii").strip()


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate, with an error that names the file."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise PkiFileError(f"{path}: cannot read certificate: {exc.strerror}") from exc
    except ValueError as exc:
        raise PkiFileError(f"{path}: not a PEM certificate: {exc}") from exc


# -- internals ----------------------------------------------------------------------------


def _now(clock: Clock | None) -> dt.datetime:
    return dt.datetime.fromtimestamp((clock or SystemClock()).now(), dt.UTC)


def _issue(
    ca: CertificateAuthority,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    paths: tuple[Path, Path],
    validity: dt.timedelta,
    clock: Clock | None,
) -> Issued:
    cert_path, key_path = paths
    if cert_path.exists():  # checked before the key is written, so a refusal leaves no key
        raise PkiFileExists(f"{cert_path}: certificate exists; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now(clock) - BACKDATE
    end = min(start + validity, ca.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    _write_key(key_path, key)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return Issued(common_name, cert_path, key_path, end)


def _spki(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _DNS_NAME.match(name):
        raise ValueError(f"server name {name!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_secret(path, pem)


def _write_secret(path: Path, data: bytes) -> None:
    _create(path, data, 0o600, "key or password")


def _write_public(path: Path, data: bytes) -> None:
    _create(path, data, 0o644, "certificate")


def _create(path: Path, data: bytes, mode: int, what: str) -> None:
    """Create ``path`` with ``mode`` (O_EXCL: never overwrite), synced to disk."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise PkiFileExists(f"{path}: {what} file exists; refusing to overwrite it") from exc
    except OSError as exc:
        raise PkiFileError(f"{path}: cannot create {what} file: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off a certificate's 0644
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret(path: Path) -> bytes:
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise PkiFileError(f"{path}: cannot read: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PkiFileError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o}; group and others must have no access "
            f"(chmod 600 {path})"
        )
    return data


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read_secret(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiFileError(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiFileError(f"{path}: not an elliptic-curve private key")
    return key


# -- puhui pki ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("init", help="create a site CA (ca.key 0600, ca.crt)")
    p.add_argument("--dir", type=Path, required=True, help="the site's PKI directory")
    p.add_argument("--name", default="puhui site CA", help="the CA's common name")
    p.add_argument("--days", type=int, default=CA_VALIDITY.days, help="validity in days")
    p.set_defaults(func=_init)

    p = sub.add_parser("issue", help="issue the broker's certificate, or a client's certificate or password")
    p.add_argument("--dir", type=Path, required=True, help="the site's PKI directory (from 'init')")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--server", metavar="NAME", action="append", help="broker DNS name or IP (repeat)")
    what.add_argument("--client", metavar="ID", help="a gateway id or the aggregator's identity")
    what.add_argument(
        "--password", metavar="ID", help="a random password file for ID instead of a certificate"
    )
    p.add_argument("--days", type=int, default=None, help="validity in days (default 825)")
    p.set_defaults(func=_issue_cmd)


def _init(args: argparse.Namespace) -> int:
    try:
        ca = make_ca(args.dir, name=args.name, validity=dt.timedelta(days=args.days))
    except PkiError as exc:
        return _fail(str(exc))
    print(f"CA {args.name!r} valid until {ca.certificate.not_valid_after_utc:%Y-%m-%d}: {ca.layout.ca_cert}")
    print(f"its key {ca.layout.ca_key} (0600): keep it offline once the site's certificates are issued")
    return 0


def _issue_cmd(args: argparse.Namespace) -> int:
    try:
        if args.password:
            path = issue_password(PkiLayout(args.dir), args.password)
            print(f"password for {args.password}: {path} (0600)")
            return 0
        ca = load_ca(args.dir)
        default = SERVER_VALIDITY if args.server else CLIENT_VALIDITY
        validity = default if args.days is None else dt.timedelta(days=args.days)
        if args.server:
            issued = issue_server(ca, args.server, validity=validity)
        else:
            issued = issue_client(ca, args.client, validity=validity)
    except (PkiError, ValueError) as exc:
        return _fail(str(exc))
    until = f"{issued.not_after:%Y-%m-%d}"
    print(f"{issued.subject}: {issued.cert_path}, key {issued.key_path} (0600), until {until}")
    return 0


def _fail(message: str) -> int:
    print(f"puhui pki: {message}", file=sys.stderr)
    return 1
