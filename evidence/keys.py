"""Gateway (and aggregator) signing keys: ECDSA P-256 with SHA-256.

P-256 is what secure elements (ATECC608-class, TPM 2.0, PKCS#11 tokens) and OCMF support.
Private keys are stored as unencrypted PKCS#8 PEM with file mode 0600; loading refuses a
key file that group or others may read or write. Public keys travel as DER
SubjectPublicKeyInfo (base64 in JSON) or PEM. The key id is the first 16 bytes (32 hex
digits) of SHA-256 over the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from evidence.errors import BadSignature, InsecureKeyFile, KeyFileError

PublicKey = ec.EllipticCurvePublicKey
SIGNATURE_ALGORITHM = "ECDSA-P256-SHA256"
# RFC 6979 deterministic nonces: no dependence on a good RNG at signing time on small
# hardware, and reproducible test vectors. Verification is unaffected.
_SIGN = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_VERIFY = ec.ECDSA(hashes.SHA256())


def public_key_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_b64(key: PublicKey) -> str:
    return base64.b64encode(public_key_der(key)).decode("ascii")


def key_id(key: PublicKey) -> str:
    """Stable identifier of a public key: hex of SHA-256(DER SPKI)[:16]."""
    return hashlib.sha256(public_key_der(key)).hexdigest()[:32]


def load_public_key(data: bytes | str) -> PublicKey:
    """Load a P-256 public key from PEM, DER, or base64 of DER."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            der = raw if raw[:1] == b"\x30" else base64.b64decode(raw, validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not a public key in PEM, DER or base64 DER: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError("public key is not ECDSA P-256 (secp256r1)")
    return key


def verify_signature(key: PublicKey, signature: bytes, data: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` (DER) signs ``data`` with ``key``."""
    try:
        key.verify(signature, data, _VERIFY)
    except InvalidSignature as exc:
        raise BadSignature(f"signature does not verify with key {key_id(key)}") from exc


class GatewayKey:
    """A P-256 private key with its public key and key id."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise KeyFileError("private key is not ECDSA P-256 (secp256r1)")
        self.private_key = private_key
        self.public_key: PublicKey = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """DER-encoded ECDSA signature over SHA-256(data)."""
        return self.private_key.sign(data, _SIGN)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_key() -> GatewayKey:
    return GatewayKey(ec.generate_private_key(ec.SECP256R1()))


def save_private_key(key: GatewayKey, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write the key as PKCS#8 PEM with mode 0600, synced to disk."""
    p = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(p, flags, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{p}: key file exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot create key file: {exc}") from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.private_pem())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: str | os.PathLike[str]) -> GatewayKey:
    """Load a PKCS#8 PEM key; refuse it if group or others may access the file."""
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read key file: {exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureKeyFile(
            f"{p}: private key has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"group and others must have no access (chmod 600 {p})"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{p}: not an unencrypted PKCS#8 PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{p}: not an elliptic-curve private key")
    return GatewayKey(key)
