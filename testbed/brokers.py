"""Private clusters of MQTT brokers that cluster: NATS (MQTT over JetStream) and RabbitMQ
(its MQTT plugin), three nodes each, on free loopback ports with temporary directories.

Secure by default, as an operator would run them: the MQTT listener speaks TLS only (the
caller's server certificate), every client logs in with a password, and each user may
publish and subscribe only to the MQTT topic filters it is given (the broker's own ACL:
NATS subject permissions, RabbitMQ topic permissions). Node-to-node links stay on
127.0.0.1 (NATS routes with a password of their own; Erlang distribution with a cookie).

A node can be killed (SIGKILL, as a crash) and started again on the same ports and data;
the cluster's ``wait_ready()`` waits until every running node accepts an MQTT login.

Errors are those of :mod:`testbed.servers` (``ServerBinaryNotFound``, ``ServerStartError``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import socket
import ssl
import tempfile
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from testbed.servers import (
    LOOPBACK,
    READY_TIMEOUT,
    PrivateServer,
    ServerBinaryNotFound,
    ServerError,
    ServerStartError,
    free_ports,
    mqtt_connack_ok,
)

CLUSTER_READY_TIMEOUT = 90.0  # three Erlang VMs booting on two shared cores take a while
NODES = 3


class BrokerTls(typing.NamedTuple):
    """The MQTT listener's certificate and key (PEM) and the CA that signed it (clients
    and the readiness probe verify the broker against it)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class MqttUser(typing.NamedTuple):
    """A login and the MQTT topic filters (``+`` and ``#`` allowed) it may use."""

    name: str
    password: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


def new_user(name: str, *, publish: Sequence[str] = (), subscribe: Sequence[str] = ()) -> MqttUser:
    """A user with a fresh random password."""
    return MqttUser(name, secrets.token_urlsafe(24), tuple(publish), tuple(subscribe))


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1.0):
        return True
    return False


def _client_context(tls: BrokerTls) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca_file))


class BrokerCluster:
    """Three nodes of one broker; ``mqtt_ports[i]`` is node ``i``'s MQTT (TLS) port."""

    kind: ClassVar[str]

    def __init__(self, nodes: Sequence[PrivateServer], tls: BrokerTls, probe: MqttUser) -> None:
        self.nodes = list(nodes)
        self.down: set[int] = set()  # killed on purpose: wait_ready does not wait for them
        self.tls = tls
        self._probe = probe

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def mqtt_ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def client_context(self) -> ssl.SSLContext:
        """TLS context of a client that verifies the brokers against the CA."""
        return _client_context(self.tls)

    def mqtt_ready(self, index: int) -> bool:
        """Whether node ``index`` accepts an MQTT login over TLS now."""
        return mqtt_connack_ok(LOOPBACK, self.mqtt_ports[index], ssl_context=self.client_context(),
                               username=self._probe.name, password=self._probe.password)  # fmt: skip

    def start(self) -> Self:
        try:
            self._start_nodes()
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _start_nodes(self) -> None:
        for node in self.nodes:
            node.start()

    def wait_ready(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Until every running node accepts an MQTT login (the cluster has formed)."""
        deadline = time.monotonic() + timeout
        for index, node in enumerate(self.nodes):
            started = bool(node.command)
            while started and index not in self.down and not self.mqtt_ready(index):
                if not node.running:
                    raise ServerStartError(
                        f"{self.kind} node {index} exited\n--- its log ---\n{node.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{self.kind} node {index} does not accept MQTT logins within {timeout:g} s\n"
                        f"--- its log ---\n{node.log_tail()}"
                    )
                time.sleep(0.2)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``, as a crash."""
        self.down.add(index)
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Start node ``index`` again on its ports and data; wait until it takes logins."""
        self.nodes[index].start()
        self.down.discard(index)
        self.wait_ready()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- NATS ---------------------------------------------------------------------------------


def _nats_subject(topic_filter: str) -> str:
    """An MQTT topic filter as a NATS subject (``/`` -> ``.``, ``+`` -> ``*``, ``#`` -> ``>``)."""
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in topic_filter.split("/"))


class NatsNode(PrivateServer):
    """One nats-server: MQTT (TLS), the NATS client port, the cluster route port, and the
    HTTP monitor, all on 127.0.0.1; JetStream's files in the work directory."""

    binary = "nats-server"
    package = "nats-server"
    port_count = 4  # MQTT, client, route, monitor

    def __init__(self, workdir: Path, *, name: str, config: typing.Callable[[tuple[int, ...]], str],
                 ports: tuple[int, ...]) -> None:  # fmt: skip
        super().__init__(workdir, ready_timeout=READY_TIMEOUT)
        self.name = name
        self._config = config
        self._ports = ports  # chosen by the cluster: every node names every route

    def _config_text(self, ports: tuple[int, ...]) -> str:
        return self._config(ports)

    def _command_line(self, binary: str, config: Path) -> list[str]:
        return [binary, "-c", str(config)]

    def _is_ready(self, ports: tuple[int, ...]) -> bool:
        return _tcp_open(ports[1])  # MQTT waits for JetStream's quorum: the cluster waits for it


class NatsCluster(BrokerCluster):
    """Three nats-server nodes with JetStream clustered; MQTT streams replicated on all
    three (``stream_replicas: 3``), so a session and its queued messages survive a node."""

    kind = "nats"

    def __init__(self, workdir: Path, tls: BrokerTls, users: Sequence[MqttUser]) -> None:
        probe = new_user("puhui-probe")
        ports = free_ports(NATS_PORTS * NODES)
        self._ports = [ports[i * NATS_PORTS : (i + 1) * NATS_PORTS] for i in range(NODES)]
        self._route_password = secrets.token_urlsafe(24)
        self._users = [*users, probe]
        self._tls = tls
        self._root = workdir
        nodes = []
        for i in range(NODES):
            name = f"n{i + 1}"
            nodes.append(NatsNode(workdir / name, name=name, ports=self._ports[i],
                                  config=functools.partial(self._config, name)))  # fmt: skip
        super().__init__(nodes, tls, probe)

    def _config(self, name: str, ports: tuple[int, ...]) -> str:
        mqtt, client, route, monitor = ports
        routes = ", ".join(
            f'"nats-route://route:{self._route_password}@{LOOPBACK}:{p[2]}"' for p in self._ports
        )
        store = self._root / name / "jetstream"
        return f"""# written by testbed.brokers.NatsCluster
server_name: {name}
listen: "{LOOPBACK}:{client}"
http: "{LOOPBACK}:{monitor}"
jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 1GB }}
cluster {{
  name: puhui
  listen: "{LOOPBACK}:{route}"
  authorization {{ user: route, password: "{self._route_password}" }}
  routes: [{routes}]
}}
authorization {{
  users: [
{self._users_text()}
  ]
}}
mqtt {{
  listen: "{LOOPBACK}:{mqtt}"
  tls {{ cert_file: "{self._tls.cert_file}", key_file: "{self._tls.key_file}", timeout: 5 }}
  stream_replicas: {NODES}
}}
"""

    def _users_text(self) -> str:
        lines = []
        for user in self._users:
            publish = json.dumps([_nats_subject(t) for t in user.publish])
            # NATS delivers a session's QoS 1 messages on $MQTT.sub.<id>: a subscriber needs it
            delivery = ["$MQTT.sub.>"] if user.subscribe else []
            subscribe = json.dumps([*(_nats_subject(t) for t in user.subscribe), *delivery])
            if user.name == "puhui-probe":
                perms = ""  # the probe connects only
            else:
                perms = f", permissions: {{ publish: {publish}, subscribe: {subscribe} }}"
            lines.append(
                f"    {{ user: {json.dumps(user.name)}, password: {json.dumps(user.password)}{perms} }}"
            )
        return "\n".join(lines)

    def _start_nodes(self) -> None:
        for node in self.nodes:  # all before any waits for MQTT: JetStream needs a quorum
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.start()


NATS_PORTS = NatsNode.port_count


# -- RabbitMQ -----------------------------------------------------------------------------

RABBITMQ_LIB = Path("/usr/lib/rabbitmq/bin")


def _rabbit_password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _rabbit_topic_regex(filters: Sequence[str], *, publish: bool) -> str:
    """Topic filters as the regex RabbitMQ matches routing keys against (``/`` -> ``.``). A
    publish is checked on the message's routing key, so ``+`` matches one level and ``#`` the
    rest; a subscription on its binding key, which keeps ``*`` and ``#``: matched literally."""
    if not filters:
        return "^$"
    one, rest = ("[^.]+", ".*") if publish else ("\\*", "\\#")

    def level(part: str) -> str:
        return one if part == "+" else rest if part == "#" else _re_escape(part)

    alternatives = "|".join("\\.".join(level(part) for part in f.split("/")) for f in filters)
    return f"^({alternatives})$"


def _re_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in ".^$*+?()[]{}|\\" else c for c in text)


class Epmd(PrivateServer):
    """The Erlang port mapper of the cluster, on a private port (the nodes find each other
    through it); run in the foreground as this process's child."""

    binary = "epmd"
    package = "erlang-base"

    def _config_text(self, ports: tuple[int, ...]) -> str:
        return ""

    def _command_line(self, binary: str, config: Path) -> list[str]:
        return [binary, "-port", str(self.port), "-address", LOOPBACK]

    def _is_ready(self, ports: tuple[int, ...]) -> bool:
        return _tcp_open(ports[0])

    def _launch(self, binary: str, ports: tuple[int, ...], *, fresh_ports: bool) -> None:
        self._ports = ports  # the command line needs the port
        super()._launch(binary, ports, fresh_ports=fresh_ports)


class RabbitNode(PrivateServer):
    """One RabbitMQ node with the MQTT plugin: MQTT over TLS only, AMQP and Erlang
    distribution on 127.0.0.1; users and topic permissions loaded from a definitions file."""

    binary = "rabbitmq-server"
    package = "rabbitmq-server"
    port_count = 3  # MQTT (TLS), AMQP, Erlang distribution

    def __init__(self, workdir: Path, *, name: str, cluster: RabbitCluster, ports: tuple[int, ...]) -> None:
        super().__init__(workdir, ready_timeout=CLUSTER_READY_TIMEOUT)
        self.name = name
        self._cluster = cluster
        self._ports = ports

    def _binary_path(self) -> str:
        path = RABBITMQ_LIB / "rabbitmq-server"  # Debian's /usr/sbin wrapper drops to its user
        if not path.is_file():
            raise ServerBinaryNotFound(f"{path} not found: install the Debian package 'rabbitmq-server'")
        return str(path)

    def _config_text(self, ports: tuple[int, ...]) -> str:
        return self._cluster.node_config(ports)

    def _command_line(self, binary: str, config: Path) -> list[str]:
        return [binary]

    def _environment(self) -> dict[str, str]:
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self._cluster.cookie)
            cookie.chmod(0o400)
        _mqtt, amqp, dist = self._require_ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **env,
            "HOME": str(home),
            "RUNNING_UNDER_SYSTEMD": "1",  # the script execs the VM: our pid is the broker's
            "RABBITMQ_NODENAME": f"{self.name}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(amqp),
            "RABBITMQ_DIST_PORT": str(dist),
            "ERL_EPMD_PORT": str(self._cluster.epmd.port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / f"{self.binary}.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "rabbitmq_mqtt",
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.workdir / "plugins-expand"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _is_ready(self, ports: tuple[int, ...]) -> bool:
        return True  # a node waits for its peers before it listens: the cluster waits for MQTT


class RabbitCluster(BrokerCluster):
    """Three RabbitMQ nodes (classic peer discovery) sharing a private epmd; the MQTT
    plugin keeps a persistent session's messages in a quorum queue
    (``mqtt.durable_queue_type = quorum``) replicated on the nodes."""

    kind = "rabbitmq"

    def __init__(self, workdir: Path, tls: BrokerTls, users: Sequence[MqttUser]) -> None:
        probe = new_user("puhui-probe")
        self.cookie = secrets.token_hex(20)
        self.epmd = Epmd(workdir / "epmd")
        self._users = [*users, probe]
        self._tls = tls
        self._workdir = workdir
        ports = free_ports(RabbitNode.port_count * NODES)
        n = RabbitNode.port_count
        nodes = [RabbitNode(workdir / f"r{i + 1}", name=f"r{i + 1}", cluster=self,
                            ports=ports[i * n:(i + 1) * n]) for i in range(NODES)]  # fmt: skip
        super().__init__(nodes, tls, probe)

    def _start_nodes(self) -> None:
        self.epmd.start()
        self._write_definitions()
        # The first node alone forms the cluster and imports the users; fresh nodes started
        # together race for it ("tables_not_present") and its virtual host goes down.
        seed, *others = self.nodes
        seed.start()
        self.wait_ready()
        for node in others:
            node.start()

    def close(self) -> None:
        super().close()
        self.epmd.close()

    @property
    def definitions(self) -> Path:
        return self._workdir / "definitions.json"

    def _write_definitions(self) -> None:
        users, permissions, topic_permissions = [], [], []
        for user in self._users:
            users.append({"name": user.name, "password_hash": _rabbit_password_hash(user.password),
                          "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})  # fmt: skip
            # queues and bindings of the user's own MQTT session; topics are checked below
            permissions.append(
                {"user": user.name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
            )
            topic_permissions.append({"user": user.name, "vhost": "/", "exchange": "amq.topic",
                                      "write": _rabbit_topic_regex(user.publish, publish=True),
                                      "read": _rabbit_topic_regex(user.subscribe, publish=False),
                                      })  # fmt: skip
        data = {"users": users, "vhosts": [{"name": "/"}], "permissions": permissions,
                "topic_permissions": topic_permissions}  # fmt: skip
        self.definitions.parent.mkdir(parents=True, exist_ok=True)
        self.definitions.write_text(json.dumps(data, indent=1))
        self.definitions.chmod(0o600)

    def node_config(self, ports: tuple[int, ...]) -> str:
        mqtt, _amqp, _dist = ports
        peers = "".join(
            f"cluster_formation.classic_config.nodes.{i + 1} = r{i + 1}@localhost\n" for i in range(NODES)
        )
        return f"""# written by testbed.brokers.RabbitCluster
listeners.tcp.default = {LOOPBACK}:{_amqp}
mqtt.listeners.tcp = none
mqtt.listeners.ssl.default = {LOOPBACK}:{mqtt}
mqtt.allow_anonymous = false
mqtt.durable_queue_type = quorum
ssl_options.certfile = {self._tls.cert_file}
ssl_options.keyfile = {self._tls.key_file}
ssl_options.cacertfile = {self._tls.ca_file}
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
default_user = puhui-unused-{secrets.token_hex(6)}
default_pass = {secrets.token_urlsafe(24)}
definitions.import_backend = local_filesystem
definitions.local.path = {self.definitions}
definitions.skip_if_unchanged = true
cluster_formation.peer_discovery_backend = classic_config
{peers}log.file.level = info
log.console = false
"""


def cluster_of(kind: str, workdir: Path | None, tls: BrokerTls, users: Sequence[MqttUser]) -> BrokerCluster:
    """A (not yet started) three-node cluster of ``kind``: ``nats`` or ``rabbitmq``."""
    root = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix=f"puhui-{kind}-"))
    if kind == "nats":
        return NatsCluster(root, tls, users)
    if kind == "rabbitmq":
        return RabbitCluster(root, tls, users)
    raise ServerError(f"no broker cluster of kind {kind!r} (nats, rabbitmq)")


def have_binary(kind: str) -> bool:
    """Whether the broker of ``kind`` is installed."""
    if kind == "nats":
        return shutil.which("nats-server") is not None or Path("/usr/sbin/nats-server").is_file()
    return (RABBITMQ_LIB / "rabbitmq-server").is_file()
