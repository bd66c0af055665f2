"""Key files: PKCS#8 PEM, mode 0600, refused when others can read them."""

import os
from pathlib import Path

import pytest

from evidence.errors import InsecureKeyFile, KeyFileError
from evidence.keys import (
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    public_key_b64,
    public_key_der,
    public_key_pem,
    save_private_key,
)


def test_save_load_round_trip_with_mode_0600(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "gw.pem"
    save_private_key(key, path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    loaded = load_private_key(path)
    assert loaded.key_id == key.key_id
    assert loaded.public_key.public_numbers() == key.public_key.public_numbers()


def test_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    path = tmp_path / "gw.pem"
    save_private_key(generate_key(), path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        save_private_key(generate_key(), path)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640, 0o660])
def test_refuses_a_key_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "gw.pem"
    save_private_key(generate_key(), path)
    os.chmod(path, mode)
    with pytest.raises(InsecureKeyFile, match=f"mode {mode:04o}.*chmod 600"):
        load_private_key(path)


def test_unreadable_or_garbage_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_private_key(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"hello")
    junk.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PKCS#8"):
        load_private_key(junk)


def test_public_key_forms_and_key_id() -> None:
    key = generate_key()
    pub = key.public_key
    for form in (public_key_pem(pub), public_key_der(pub), public_key_b64(pub)):
        assert key_id(load_public_key(form)) == key.key_id
    assert len(key.key_id) == 32 and key.key_id != generate_key().key_id
    with pytest.raises(KeyFileError, match="not a public key"):
        load_public_key(b"@@@")


def test_non_p256_public_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(KeyFileError, match="not ECDSA P-256"):
        load_public_key(public_key_pem(other))
