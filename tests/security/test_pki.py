"""The site PKI: file modes, refusals, what the certificates say, and the CLI."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from puhui.broker import mosquitto_hash
from puhui.cli import main
from puhui.pki import (
    CLIENT_VALIDITY,
    PkiError,
    PkiFileError,
    PkiFileExists,
    PkiLayout,
    issue_client,
    issue_password,
    issue_server,
    load_ca,
    load_certificate,
    make_ca,
    read_password,
)

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_secret_is_0600_and_every_certificate_0644(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    issue_server(ca, ["broker.site.example"])
    issue_client(ca, "gw-a")
    issue_password(ca.layout, "gw-b")
    layout = PkiLayout(tmp_path)
    secrets = [layout.ca_key, layout.server_key, layout.client_key("gw-a"), layout.client_password("gw-b")]
    certificates = [layout.ca_cert, layout.server_cert, layout.client_cert("gw-a")]
    assert {p.name: _mode(p) for p in secrets} == {p.name: 0o600 for p in secrets}
    assert {p.name: _mode(p) for p in certificates} == {p.name: 0o644 for p in certificates}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        p.name for p in secrets + certificates
    )


def test_modes_hold_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        issue_client(make_ca(tmp_path), "gw-a")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ca.key") == _mode(tmp_path / "clients" / "gw-a.key") == 0o600


def test_nothing_is_overwritten(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    key_before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(PkiFileExists, match=r"ca\.key: key or password file exists"):
        make_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == key_before
    issue_client(ca, "gw-a")
    cert_before = ca.layout.client_cert("gw-a").read_bytes()
    with pytest.raises(PkiFileExists, match=r"gw-a\.crt: certificate exists"):
        issue_client(ca, "gw-a")
    assert ca.layout.client_cert("gw-a").read_bytes() == cert_before
    issue_password(ca.layout, "gw-b")
    with pytest.raises(PkiFileExists, match=r"gw-b\.password"):
        issue_password(ca.layout, "gw-b")


def test_client_certificate_names_the_identity_and_chains_to_the_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, clock=ManualClock(T0.timestamp()))
    issued = issue_client(ca, "zjk-village-01", clock=ManualClock(T0.timestamp()))
    cert = load_certificate(issued.cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "zjk-village-01"
    cert.verify_directly_issued_by(ca.certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # explicit validity: from an hour before issue (clock slack) for CLIENT_VALIDITY
    assert cert.not_valid_before_utc == T0 - dt.timedelta(hours=1)
    assert cert.not_valid_after_utc == T0 - dt.timedelta(hours=1) + CLIENT_VALIDITY
    assert issued.not_after == cert.not_valid_after_utc


def test_server_certificate_covers_loopback_and_given_names(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert = load_certificate(issue_server(ca, ["mqtt.site.example", "10.0.0.5"]).cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.site.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, validity=dt.timedelta(days=30))
    issued = issue_client(ca, "gw-a", validity=dt.timedelta(days=825))
    assert issued.not_after == ca.certificate.not_valid_after_utc


@pytest.mark.parametrize("identity", ["a/b", "+", "#", "", "gw a", "-lead", "x" * 65])
def test_identity_that_cannot_be_a_user_name_and_topic_level_is_refused(
    tmp_path: Path, identity: str
) -> None:
    ca = make_ca(tmp_path)
    with pytest.raises(ValueError, match="must match"):
        issue_client(ca, identity)
    assert not (tmp_path / "clients").exists() or not any((tmp_path / "clients").iterdir())


def test_bad_server_name_is_refused_before_any_file_is_written(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
        issue_server(ca, ["bad name"])
    assert not ca.layout.server_key.exists()


def test_load_ca_refuses_a_key_others_may_read(tmp_path: Path) -> None:
    make_ca(tmp_path)
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(PkiFileError, match=r"ca\.key: mode 0644; group and others must have no access"):
        load_ca(tmp_path)


def test_load_ca_refuses_a_key_of_another_ca(tmp_path: Path) -> None:
    make_ca(tmp_path / "one")
    make_ca(tmp_path / "two")
    (tmp_path / "one" / "ca.key").unlink()
    (tmp_path / "two" / "ca.key").rename(tmp_path / "one" / "ca.key")
    with pytest.raises(PkiFileError, match="does not belong to the certificate"):
        load_ca(tmp_path / "one")


def test_password_is_random_and_read_back(tmp_path: Path) -> None:
    layout = PkiLayout(tmp_path)
    one, two = read_password(issue_password(layout, "gw-a")), read_password(issue_password(layout, "gw-b"))
    assert one != two and len(one) >= 43  # 32 random bytes, base64url
    layout.client_password("gw-a").chmod(0o640)
    with pytest.raises(PkiFileError, match="chmod 600"):
        read_password(layout.client_password("gw-a"))


# -- the broker's password hash is Mosquitto's own -----------------------------------------------


@settings(max_examples=5, deadline=None)
@given(password=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
def test_password_hash_matches_mosquitto_passwd(
    tmp_path_factory: pytest.TempPathFactory, password: str
) -> None:
    passwd = tmp_path_factory.mktemp("passwd") / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "someone", password], check=True)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    _, _, rounds, salt, _ = theirs.split("$")
    assert mosquitto_hash(password.encode(), base64.b64decode(salt), int(rounds)) == theirs


# -- puhui pki ------------------------------------------------------------------------------------


def test_cli_init_issue_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "pki")
    assert main(["pki", "init", "--dir", d]) == 0
    assert main(["pki", "issue", "--dir", d, "--server", "mqtt.site.example", "--server", "10.1.2.3"]) == 0
    assert main(["pki", "issue", "--dir", d, "--client", "gw-a", "--days", "30"]) == 0
    assert main(["pki", "issue", "--dir", d, "--password", "gw-b"]) == 0
    out = capsys.readouterr().out
    assert "gw-a.key (0600)" in out and "gw-b.password (0600)" in out
    assert main(["pki", "issue", "--dir", d, "--client", "gw-a"]) == 1
    assert main(["pki", "issue", "--dir", d, "--client", "a/b"]) == 1
    assert main(["pki", "init", "--dir", d]) == 1
    err = capsys.readouterr().err
    assert "gw-a.crt: certificate exists; refusing to overwrite it" in err
    assert "identity 'a/b' must match" in err
    assert "ca.key: key or password file exists" in err
    assert "Traceback" not in err


def test_cli_issue_without_a_ca_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pki", "issue", "--dir", str(tmp_path), "--client", "gw-a"]) == 1
    assert f"puhui pki: {tmp_path / 'ca.crt'}: cannot read certificate" in capsys.readouterr().err


def test_pki_error_tree() -> None:
    assert issubclass(PkiFileExists, PkiError) and issubclass(PkiFileError, PkiError)
