"""A site's Mosquitto 2.x configuration: TLS, no anonymous access, a closed access list.

:func:`write_broker_config` writes, for a :class:`BrokerSite`:

- ``mosquitto.conf``: one TLS listener (TLS 1.2 minimum) with the site PKI's server
  certificate. Clients authenticate with a certificate whose CN is their MQTT user name
  (``auth: certificate``) or with a user name and password (``auth: password``);
  ``allow_anonymous false``.
- ``dynamic-security.json`` (0600): the access list, enforced by Mosquitto's dynamic
  security plugin. Gateway G may publish only ``puhui/v1/G/batch`` and subscribe to and
  receive only ``puhui/v1/G/ack`` and ``.../reject``; only the aggregator may subscribe to the
  batches (directly or through the shared subscription) and publish replies. An MQTT
  meter's topic (:class:`MeterTopic`) may be published only by its publisher's identity
  and read only by the gateway that meters it. Everything else is denied, including to
  identities that are not on the roster.

Why the plugin and not an ``acl_file``: Mosquitto 2.0's ``acl_file`` never refuses a
subscription; it only filters at delivery. A stranger who joins the aggregators' shared
subscription is then dealt every n-th batch, which the ACL drops: the aggregator lost
20 of 30 batches to two such members (docs/security.md). The plugin refuses the SUBSCRIBE.

``insecure=True`` writes the old anonymous plain-text listener instead, under a loud
comment. Threat model: docs/security.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evidence.wire import SHARE_GROUP, TOPIC_ROOT, ack_topic, batch_subscription, batch_topic, reject_topic
from puhui.pki import PkiError, PkiLayout, check_identity, load_certificate, read_password

MQTTS_PORT = 8883
TLS_MINIMUM = "tlsv1.2"
PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
               "/usr/lib", "/usr/local/lib")  # fmt: skip
# Mosquitto 2.0's own password hash: PBKDF2-SHA512, 101 rounds, 12-byte salt (what
# mosquitto_passwd and mosquitto_ctrl write). The passwords are 256-bit random, so more
# rounds would add nothing.
PBKDF2_ROUNDS = 101
SALT_BYTES = 12
_INSECURE_BANNER = """\
# !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
# !! INSECURE: plain text, anonymous clients, no access list. Anyone who reaches this !!
# !! port reads every household's consumption, publishes as any gateway and joins    !!
# !! the aggregators' shared subscription. Development machines only (insecure=true). !!
# !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


class MeterTopic(BaseModel):
    """An MQTT meter's topic: only ``publisher`` may publish on it, only ``gateway`` read it.

    The topic is literal (no wildcards), outside ``$`` topics and outside the evidence
    topics (``puhui/v1/...``), so a meter can never speak for a gateway. A publisher may
    own several topics (a simulator or a data logger standing in for several meters).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(min_length=1, max_length=1024)
    publisher: str = Field(description="the identity that publishes the readings")
    gateway: str = Field(description="the gateway that subscribes to them")

    @field_validator("topic")
    @classmethod
    def _literal_topic(cls, value: str) -> str:
        if any(c in value for c in "+#\0") or value.startswith("$"):
            raise ValueError(f"meter topic {value!r} must be a literal topic: no +, #, NUL or leading $")
        if value == TOPIC_ROOT or value.startswith(TOPIC_ROOT + "/"):
            raise ValueError(f"meter topic {value!r} is inside the evidence topics {TOPIC_ROOT}/...")
        return value

    @field_validator("publisher", "gateway")
    @classmethod
    def _identity(cls, value: str) -> str:
        return check_identity(value)


class BrokerSite(BaseModel):
    """Who may connect to a site's broker, how, and what each identity may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pki: Path = Field(description="the site PKI directory (puhui pki init)")
    gateways: tuple[str, ...] = Field(default=(), description="gateway ids allowed to send batches")
    meters: tuple[MeterTopic, ...] = Field(default=(), description="MQTT meters' topics, publishers, readers")
    aggregator: str = Field(default="aggregator", description="the aggregator's identity")
    port: int = Field(default=MQTTS_PORT, ge=1, le=65535)
    bind_address: str | None = Field(default=None, description="listen on one address (default: all)")
    auth: Literal["certificate", "password"] = "certificate"
    share_group: str = SHARE_GROUP
    plugin: Path | None = Field(default=None, description="the dynamic security plugin (default: found)")
    insecure: bool = False

    @field_validator("gateways")
    @classmethod
    def _gateway_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for gateway in value:
            check_identity(gateway)
        if len(set(value)) != len(value):
            raise ValueError("a gateway id is listed twice")
        return value

    @field_validator("aggregator", "share_group")
    @classmethod
    def _identity(cls, value: str) -> str:
        return check_identity(value)

    @model_validator(mode="after")
    def _roles_apart(self) -> BrokerSite:
        if self.aggregator in self.gateways:
            raise ValueError(f"{self.aggregator!r} is both the aggregator and a gateway")
        topics = [m.topic for m in self.meters]
        for i, meter in enumerate(self.meters):
            where = f"meters[{i}]"
            if meter.gateway not in self.gateways:
                raise ValueError(f"{where}: gateway {meter.gateway!r} is not one of the site's gateways")
            if meter.publisher == self.aggregator or meter.publisher in self.gateways:
                raise ValueError(
                    f"{where}: publisher {meter.publisher!r} is the aggregator or a gateway; a meter "
                    "publishes under an identity of its own"
                )
            if topics.count(meter.topic) > 1:
                raise ValueError(f"{where}: topic {meter.topic!r} is listed twice")
        return self

    @property
    def publishers(self) -> tuple[str, ...]:
        """The MQTT meters' publisher identities, each once, in order of appearance."""
        return tuple(dict.fromkeys(m.publisher for m in self.meters))

    @property
    def roster(self) -> tuple[str, ...]:
        """Every identity the access list names: the aggregator, the gateways, the meters'
        publishers."""
        return (self.aggregator, *self.gateways, *self.publishers)


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The files :func:`write_broker_config` wrote (``access`` is None when insecure)."""

    config: Path
    access: Path | None


def write_broker_config(site: BrokerSite, out: str | os.PathLike[str]) -> BrokerFiles:
    """Write ``mosquitto.conf`` and ``dynamic-security.json`` into ``out``.

    Both are replaced atomically, so a roster change is: rewrite, restart the broker. The
    PKI's keys and passwords are only read.
    """
    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    files = BrokerFiles(
        folder / "mosquitto.conf", None if site.insecure else folder / "dynamic-security.json"
    )
    text = listener_text(site, files, port=site.port, bind=site.bind_address)  # checks the PKI first
    if files.access is not None:
        write_access_list(site, files.access)
    _replace(files.config, text, 0o644)
    return files


def write_access_list(site: BrokerSite, path: Path) -> Path:
    """Write (replace) the access list alone, mode 0600: for a broker whose listener lines
    come from :func:`listener_text` with a port chosen at start (``puhui demo``, tests)."""
    _replace(path, json.dumps(access_document(site), indent=2) + "\n", 0o600)
    return path


def listener_text(site: BrokerSite, files: BrokerFiles, *, port: int, bind: str | None) -> str:
    """The listener and access lines of ``mosquitto.conf`` for ``port`` on ``bind``.

    Checks that the PKI files it names exist, so a missing one fails here, not in the broker.
    """
    listener = f"listener {port}{'' if bind is None else ' ' + bind}"
    if site.insecure:
        return f"{_INSECURE_BANNER}{listener}\nallow_anonymous true\n"
    layout = PkiLayout(site.pki.resolve())
    lines = [
        "# written by puhui broker config: TLS only, no anonymous clients, closed access list",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {site.plugin or find_plugin()}",
        f"plugin_opt_config_file {files.access}",
        listener,
        f"tls_version {TLS_MINIMUM}",
        f"certfile {_certificate(layout.server_cert)}",
        f"keyfile {_present(layout.server_key)}",
    ]
    if site.auth == "certificate":
        lines += [
            f"cafile {_certificate(layout.ca_cert)}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
    return "\n".join(lines) + "\n"


def access_document(site: BrokerSite, salt: Callable[[int], bytes] = secrets.token_bytes) -> dict[str, Any]:
    """The dynamic security plugin's configuration: one role per identity, default deny.

    Subscriptions are matched literally: the exact filters the aggregator and gateways use
    (:mod:`evidence.wire`), nothing wider. Nobody may publish to ``$CONTROL``, so the list
    cannot be changed through the broker.
    """
    roles = [
        _aggregator_role(site),
        *(_gateway_role(g, [m.topic for m in site.meters if m.gateway == g]) for g in site.gateways),
        *(_publisher_role(p, [m.topic for m in site.meters if m.publisher == p]) for p in site.publishers),
    ]
    clients = []
    for identity, role in zip(site.roster, roles, strict=True):
        client: dict[str, Any] = {"username": identity, "roles": [{"rolename": role["rolename"]}]}
        if site.auth == "password":
            client |= _password_fields(PkiLayout(site.pki).client_password(identity), salt(SALT_BYTES))
        clients.append(client)
    default_deny = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                    "unsubscribe": True}  # fmt: skip
    return {"clients": clients, "groups": [], "roles": roles, "defaultACLAccess": default_deny}


def mosquitto_hash(password: bytes, salt: bytes, rounds: int = PBKDF2_ROUNDS) -> str:
    """``$7$rounds$salt$hash``: what ``mosquitto_passwd -b`` writes for ``password``."""
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, rounds, 64)
    return f"$7${rounds}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def find_plugin() -> Path:
    """Mosquitto's dynamic security plugin (Debian's mosquitto package ships it)."""
    for folder in PLUGIN_DIRS:
        candidate = Path(folder) / PLUGIN_NAME
        if candidate.is_file():
            return candidate
    raise PkiError(
        f"{PLUGIN_NAME} not found in {', '.join(PLUGIN_DIRS)}: install Mosquitto 2.x "
        "(apt-get install mosquitto) or name the file (plugin: / --plugin)"
    )


def _aggregator_role(site: BrokerSite) -> dict[str, Any]:
    batches = f"{TOPIC_ROOT}/+/batch"
    acls = [
        ("subscribeLiteral", batch_subscription(site.share_group)),
        ("subscribeLiteral", batches),
        ("publishClientReceive", batches),
        ("publishClientSend", f"{TOPIC_ROOT}/+/ack"),
        ("publishClientSend", f"{TOPIC_ROOT}/+/reject"),
    ]
    return _role(f"aggregator:{site.aggregator}", acls)


def _gateway_role(gateway: str, meter_topics: list[str]) -> dict[str, Any]:
    """Publish its batches; subscribe to and receive its replies and its meters' readings."""
    reads = (ack_topic(gateway), reject_topic(gateway), *meter_topics)
    acls = [("publishClientSend", batch_topic(gateway))]
    acls += [(kind, topic) for topic in reads for kind in ("subscribeLiteral", "publishClientReceive")]
    return _role(f"gateway:{gateway}", acls)


def _publisher_role(publisher: str, topics: list[str]) -> dict[str, Any]:
    """An MQTT meter's identity: publish its readings, nothing else (it reads nothing)."""
    return _role(f"meter:{publisher}", [("publishClientSend", topic) for topic in topics])


def _role(name: str, acls: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "rolename": name,
        "acls": [{"acltype": kind, "topic": topic, "allow": True} for kind, topic in acls],
    }


def _password_fields(path: Path, salt: bytes) -> dict[str, Any]:
    _, _, rounds, salt_b64, digest_b64 = mosquitto_hash(read_password(path).encode(), salt).split("$")
    return {"password": digest_b64, "salt": salt_b64, "iterations": int(rounds)}


def _certificate(path: Path) -> Path:
    load_certificate(path)  # raises PkiFileError naming the file
    return path


def _present(path: Path) -> Path:
    if not path.is_file():
        raise PkiError(f"{path}: missing (create it with 'puhui pki')")
    return path


def _replace(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a temporary file with ``mode`` and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- puhui broker -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("config", help="write mosquitto.conf and its access list for a site")
    p.add_argument("--pki", type=Path, required=True, help="the site PKI directory (puhui pki init)")
    p.add_argument("--out", type=Path, required=True, help="directory for the broker's files")
    p.add_argument("--port", type=int, default=MQTTS_PORT)
    p.add_argument("--bind", default=None, help="listen on this address only (default: all)")
    p.add_argument("--gateway", action="append", default=[], metavar="ID", help="a gateway id (repeat)")
    p.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="PUBLISHER:GATEWAY:TOPIC",
        help="an MQTT meter: PUBLISHER alone publishes on TOPIC, GATEWAY alone reads it (repeat)",
    )
    p.add_argument("--aggregator", default="aggregator", metavar="ID", help="the aggregator's identity")
    p.add_argument("--auth", choices=("certificate", "password"), default="certificate")
    p.add_argument("--share-group", default=SHARE_GROUP, help="the aggregators' shared-subscription group")
    p.add_argument("--plugin", type=Path, default=None, help=f"path of {PLUGIN_NAME} (default: found)")
    p.add_argument(
        "--insecure", action="store_true", help="plain text, anonymous, no access list (development)"
    )
    p.set_defaults(func=_config_cmd)


def _config_cmd(args: argparse.Namespace) -> int:
    options = {"gateways": tuple(args.gateway), "aggregator": args.aggregator, "port": args.port,
               "bind_address": args.bind, "auth": args.auth, "share_group": args.share_group,
               "plugin": args.plugin, "insecure": args.insecure}  # fmt: skip
    try:
        options["meters"] = tuple(_meter_argument(text) for text in args.meter)
        site = BrokerSite(pki=args.pki, **options)
        files = write_broker_config(site, args.out)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _fail(problems)
    except (PkiError, ValueError) as exc:
        return _fail(str(exc))
    if site.insecure:
        print("WARNING: insecure broker: plain text, anonymous clients, no access list", file=sys.stderr)
    print(f"wrote {files.config}" + (f" and {files.access} (0600)" if files.access else ""))
    if files.access is not None:
        key = PkiLayout(site.pki.resolve()).server_key
        print(f"the broker's user must read {files.access} and {key} (e.g. chown mosquitto: both)")
    print(f"run: mosquitto -c {files.config}")
    return 0


def _meter_argument(text: str) -> MeterTopic:
    """``PUBLISHER:GATEWAY:TOPIC`` (the topic may itself hold colons)."""
    parts = text.split(":", 2)
    if len(parts) != 3:
        raise ValueError(f"--meter {text!r}: expected PUBLISHER:GATEWAY:TOPIC")
    publisher, gateway, topic = parts
    return MeterTopic(topic=topic, publisher=publisher, gateway=gateway)


def _fail(message: str) -> int:
    print(f"puhui broker config: {message}", file=sys.stderr)
    return 1
