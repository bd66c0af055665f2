"""``puhui platform pull`` against the real API: mirrors and verifies every statement,
resumes after a crash without refetching what it settled, and never files an unverified
package as verified."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from evidence import generate_key, public_key_pem
from puhui.platform import pull
from tests.aggregator.api.support import Populated, RunningApi, make_token

pytestmark = pytest.mark.integration


def _token_file(populated: Populated, tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(make_token(populated.config, "statements:read") + "\n")
    path.chmod(0o600)
    return path


def _command(api: RunningApi, populated: Populated, token: Path, out: Path, issuer: Path) -> list[str]:
    return [sys.executable, "-m", "puhui.cli", "platform", "pull", "--from", api.url,
            "--token-file", str(token), "--ca-file", str(populated.ca), "--issuer", str(issuer),
            "--out", str(out)]  # fmt: skip


def test_pull_mirrors_and_verifies_every_statement_then_finds_nothing_new(
    api: RunningApi, populated: Populated, tmp_path: Path
) -> None:
    token, out = _token_file(populated, tmp_path), tmp_path / "mirror"
    cmd = _command(api, populated, token, out, populated.issuer_pem)
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"{len(populated.statements)} verified, 0 refused" in first.stdout
    assert sorted(p.stem for p in (out / "verified").glob("*.statement")) == sorted(populated.statements)
    assert (out / "cursor.json").exists()
    shutil.rmtree(out / "verified")  # the cursor alone says where to go on: nothing is fetched again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 verified, 0 refused" in again.stdout


def test_a_crash_resumes_without_refetching_what_was_settled(
    api: RunningApi, populated: Populated, tmp_path: Path
) -> None:
    token = make_token(populated.config, "statements:read")
    out = tmp_path / "mirror"
    trust = ssl.create_default_context(cafile=populated.ca)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api.url, headers=headers, verify=trust, timeout=60) as c:
        part = pull(c, populated.aggregator.public_key, out, limit=2)  # "crashes" after two
        fetched: list[str] = []
        c.event_hooks["request"] = [lambda request: fetched.append(request.url.path)]
        rest = pull(c, populated.aggregator.public_key, out)
    assert len(part.verified) == 2 and rest.ok
    assert sorted(part.verified + rest.verified) == sorted(populated.statements)
    assert not any(sid in path for sid in part.verified for path in fetched)


def test_a_package_that_fails_is_filed_as_refused_never_as_verified(
    api: RunningApi, populated: Populated, tmp_path: Path
) -> None:
    wrong = tmp_path / "someone-else.pub.pem"
    wrong.write_bytes(public_key_pem(generate_key().public_key))
    token, out = _token_file(populated, tmp_path), tmp_path / "mirror"
    run = subprocess.run(
        _command(api, populated, token, out, wrong), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 1
    assert f"0 verified, {len(populated.statements)} refused" in run.stdout
    assert not list((out / "verified").iterdir())
    reasons = (out / "refused" / f"{populated.statements[0]}.reasons.txt").read_text()
    assert "pinned aggregator key" in reasons


def test_the_token_never_comes_from_the_command_line(
    api: RunningApi, populated: Populated, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("puhui_x\n")
    token.chmod(0o644)
    run = subprocess.run(_command(api, populated, token, tmp_path / "m", populated.issuer_pem),
                         capture_output=True, text=True, timeout=60, env={**os.environ})  # fmt: skip
    assert run.returncode == 2 and "chmod 600" in run.stderr and "Traceback" not in run.stderr
