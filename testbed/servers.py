"""Private Mosquitto, InfluxDB and PostgreSQL servers on free loopback ports.

Used by the real-server test tier and by ``puhui demo``. Each server is the Debian binary
run as a child process with a config file, data and log in its own work directory, bound
to ``127.0.0.1`` only, so that parallel runs never collide and nothing listens beyond
loopback.

``start()`` after ``stop()`` (or ``kill()``) reuses the same ports and data directory:
clients reconnect to the same address and InfluxDB keeps its data.

Children die with their parent (``PR_SET_PDEATHSIG`` on Linux) so a killed test run does
not leave servers behind. Linux delivers that signal when the *thread* that started the
child exits, so it is only armed when ``start()`` runs on the main thread; a server
started from a worker thread must be stopped explicitly.

Errors::

    ServerError
     ├── ServerBinaryNotFound   the Debian package is not installed
     └── ServerStartError       exited early or not ready in time (message has the log tail)
          └── PortTaken         restart impossible: another process holds the port
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import http.client
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 5
_POLL_INTERVAL = 0.05
_PR_SET_PDEATHSIG = 1
_START_MARKER = "--- puhui: starting "


class ServerError(Exception):
    """Base class of every error raised by this module."""


class ServerBinaryNotFound(ServerError):
    """The server binary is not installed."""


class ServerStartError(ServerError):
    """The server exited before it was ready, or was not ready before the deadline."""


class PortTaken(ServerStartError):
    """A restart cannot reuse its port because another process now listens on it."""


def find_binary(name: str, package: str) -> str:
    """Path of the executable ``name``, looked up on PATH, then /usr/sbin and /usr/bin."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerBinaryNotFound(
        f"{name} not found on PATH nor in /usr/sbin, /usr/bin: install the Debian package "
        f"'{package}' (apt-get install mosquitto influxdb, or make system-deps)"
    )


RESERVED_LOW = 10_000  # below: the well-known and registered services a machine may run


def free_ports(count: int) -> tuple[int, ...]:
    """``count`` distinct ports that are free on 127.0.0.1 right now, outside the kernel's
    ephemeral range. A port handed out by the OS (bind to 0) is an ephemeral one, and any
    outgoing connection made before the server listens, or while it is down for a restart on
    the same port, may take it as its local port (a RabbitMQ cluster's nodes did, between the
    cluster choosing its nodes' ports and starting the last node)."""
    low, high = _ephemeral_range()
    pool = [p for p in range(RESERVED_LOW, 65_536) if not low <= p <= high]
    if len(pool) < 1000:  # a machine whose ephemeral range is nearly everything
        return _os_ports(count)
    rng = secrets.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in rng.sample(pool, min(len(pool), 50 * count + 100)):
            sock = stack.enter_context(socket.socket())  # held until all are found: distinct
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == count:
                return tuple(ports)
    return _os_ports(count)


def _os_ports(count: int) -> tuple[int, ...]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:  # all bound at once, so the ports are distinct
            sock.bind((LOOPBACK, 0))
        return tuple(sock.getsockname()[1] for sock in socks)


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's local port range for outgoing connections (Linux's default if unknown)."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return low, high


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now.

    SO_REUSEADDR mimics what Mosquitto and Go servers set, so TIME_WAIT leftovers of a
    stopped server do not count as taken, while a listening socket does.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this thread dies (Linux)."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in child
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


class _PortCollision(Exception):
    """Internal: a freshly picked port was taken before the server bound it."""


class PrivateServer(abc.ABC):
    """A server binary run as a child process on private loopback ports and directories."""

    binary: ClassVar[str]
    package: ClassVar[str]
    port_count: ClassVar[int] = 1

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        extra_config: str = "",
        ready_timeout: float = READY_TIMEOUT,
        outlive_parent: bool = False,
    ) -> None:
        self.outlive_parent = outlive_parent  # every (re)start survives this process
        self._own_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self._extra_config = extra_config
        self._ready_timeout = ready_timeout
        self._ports: tuple[int, ...] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._command: list[str] = []

    # -- properties ------------------------------------------------------------------

    @property
    def host(self) -> str:
        """Always 127.0.0.1."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The client port, fixed at the first ``start()`` and kept across restarts."""
        return self._require_ports()[0]

    @property
    def workdir(self) -> Path:
        """Directory that holds config, data and log (created at the first start)."""
        if self._workdir is None:
            raise ServerError(f"{self.binary} has no work directory before start()")
        return self._workdir

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr go there too)."""
        return self.workdir / f"{self.binary}.log"

    @property
    def pid(self) -> int | None:
        """Process id while running, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def command(self) -> list[str]:
        """The command line of the last start."""
        return list(self._command)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it answers; same ports and data as before."""
        if self.running:
            raise ServerError(f"{self.binary} is already running (pid {self.pid})")
        binary = self._binary_path()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"puhui-{self.binary}-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        if self._ports is not None:
            self._restart_on(binary, self._ports)
            return self
        collision: _PortCollision | None = None
        for _ in range(_PORT_ATTEMPTS):
            ports = free_ports(self.port_count)
            try:
                self._launch(binary, ports, fresh_ports=True)
            except _PortCollision as exc:
                collision = exc
                continue
            self._ports = ports
            return self
        raise ServerStartError(
            f"{self.binary}: picked ports were taken {_PORT_ATTEMPTS} times; last: {collision}"
        )

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL. Idempotent; ports and data are kept."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would. Ports and data are kept."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> Self:
        """``stop()`` then ``start()`` on the same ports and data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the work directory if this object created it."""
        self.stop()
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=False)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log file ('' if there is none yet)."""
        if self._workdir is None or not self.log_path.exists():
            return ""
        with self.log_path.open(encoding="utf-8", errors="replace") as log:
            return "".join(deque(log, maxlen=lines))

    # -- what each server defines ----------------------------------------------------

    @abc.abstractmethod
    def _config_text(self, ports: tuple[int, ...]) -> str:
        """The config file for these ports."""

    @abc.abstractmethod
    def _command_line(self, binary: str, config: Path) -> list[str]:
        """The command that runs the server with ``config``."""

    @abc.abstractmethod
    def _is_ready(self, ports: tuple[int, ...]) -> bool:
        """One readiness probe; False while not answering yet."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _binary_path(self) -> str:
        return find_binary(self.binary, self.package)

    # -- internals -------------------------------------------------------------------

    def _require_ports(self) -> tuple[int, ...]:
        if self._ports is None:
            raise ServerError(f"{self.binary} has no port before the first start()")
        return self._ports

    def _restart_on(self, binary: str, ports: tuple[int, ...]) -> None:
        taken = [p for p in ports if not port_is_free(p)]
        if taken:
            raise PortTaken(
                f"{self.binary}: cannot start again on {LOOPBACK}:{taken[0]}: another process "
                f"listens there now (ports {list(ports)} are kept across restarts so that "
                f"clients reconnect to the same address)\nlast log lines:\n{self.log_tail()}"
            )
        try:
            self._launch(binary, ports, fresh_ports=False)
        except _PortCollision as exc:
            raise PortTaken(str(exc)) from None

    def _launch(self, binary: str, ports: tuple[int, ...], *, fresh_ports: bool) -> None:
        config = self.workdir / f"{self.binary}.conf"
        config.write_text(self._config_text(ports), encoding="utf-8")
        self._command = self._command_line(binary, config)
        with self.log_path.open("ab") as log:
            log.write(f"{_START_MARKER}{shlex.join(self._command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._environment(),
                # Dies with this process unless told to outlive it, on every (re)start; a
                # server that outlives it leaves its process group (Ctrl-C stays with us).
                preexec_fn=None if self.outlive_parent else _parent_death_hook(),
                start_new_session=self.outlive_parent,
            )
        self._wait_ready(ports, fresh_ports=fresh_ports)

    def _wait_ready(self, ports: tuple[int, ...], *, fresh_ports: bool) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if self._is_ready(ports) and proc.poll() is None:
                return
            if proc.poll() is not None:
                self._raise_exited(ports, proc.returncode, fresh_ports=fresh_ports)
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    self._failure(f"not ready within {self._ready_timeout:g} s; killed it")
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_POLL_INTERVAL)  # doubles as the poll pause, ends early on exit

    def _raise_exited(self, ports: tuple[int, ...], code: int, *, fresh_ports: bool) -> None:
        taken = [p for p in ports if not port_is_free(p)]
        message = self._failure(f"exited with status {code} before it was ready")
        this_run = self.log_tail().rpartition(_START_MARKER)[2]
        if fresh_ports and (taken or "address already in use" in this_run.lower()):
            raise _PortCollision(message)  # someone took a port we picked: pick others
        if taken:
            raise PortTaken(f"port {taken[0]} is taken by another process; {message}")
        raise ServerStartError(message)

    def _failure(self, what: str) -> str:
        return (
            f"{self.binary} {what}\n  command: {shlex.join(self._command)}\n"
            f"  log: {self.log_path}\n--- last {LOG_TAIL_LINES} log lines ---\n{self.log_tail()}"
        )


def _run_as_user_line() -> str:
    """Mosquitto started as root switches to user 'mosquitto', which cannot write our
    private directory; naming the current user keeps it (a no-op when not root)."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"


class PrivateMosquitto(PrivateServer):
    """Mosquitto 2.x on a free 127.0.0.1 port, anonymous access, log in the work dir.

    ``listener(port, host)`` replaces the anonymous plain-text listener with the caller's
    listener and access lines (e.g. TLS with a site's access list, from ``puhui.broker``);
    ``ready_probe(host, port)`` then says when the broker answers (see
    :func:`mqtt_connack_ok`'s ``ssl_context``, ``username`` and ``password``).
    """

    binary = "mosquitto"
    package = "mosquitto"

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        persistence: bool = False,
        extra_config: str = "",
        listener: Callable[[int, str], str] | None = None,
        ready_probe: Callable[[str, int], bool] | None = None,
        ready_timeout: float = READY_TIMEOUT,
        outlive_parent: bool = False,
    ) -> None:
        super().__init__(
            workdir, extra_config=extra_config, ready_timeout=ready_timeout, outlive_parent=outlive_parent
        )
        self._persistence = persistence
        self._listener = listener
        self._ready_probe = ready_probe or mqtt_connack_ok

    def _config_text(self, ports: tuple[int, ...]) -> str:
        persistence = "persistence false\n"
        if self._persistence:
            store = self.workdir / "persistence"
            store.mkdir(exist_ok=True)
            persistence = f"persistence true\npersistence_location {store}/\n"
        return (
            "# written by testbed.servers.PrivateMosquitto\n"
            f"{self._listener_text(ports[0])}"
            f"{persistence}"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
            "connection_messages true\n"
            f"{_run_as_user_line()}"
            f"{self._extra_config}\n"
        )

    def _command_line(self, binary: str, config: Path) -> list[str]:
        return [binary, "-c", str(config)]

    def _listener_text(self, port: int) -> str:
        if self._listener is None:
            return f"listener {port} {LOOPBACK}\nallow_anonymous true\n"
        text = self._listener(port, LOOPBACK)
        return text if text.endswith("\n") else text + "\n"

    def _is_ready(self, ports: tuple[int, ...]) -> bool:
        return self._ready_probe(LOOPBACK, ports[0])


def mqtt_connack_ok(
    host: str,
    port: int,
    timeout: float = 1.0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    username: str | None = None,
    password: str | None = None,
) -> bool:
    """Whether an MQTT 3.1.1 CONNECT to ``host:port`` is accepted (CONNACK code 0).

    With ``ssl_context`` the probe speaks TLS (a client certificate loaded into the context
    is presented); ``username`` and ``password`` go into the CONNECT.
    """
    connect = _connect_packet(b"puhui-ready-probe", username, password)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock = raw if ssl_context is None else ssl_context.wrap_socket(raw, server_hostname=host)
            with sock:
                sock.sendall(connect)
                reply = _recv_exactly(sock, 4)
                sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:  # ssl.SSLError is an OSError
        return False
    return reply == b"\x20\x02\x00\x00"


def _connect_packet(client_id: bytes, username: str | None, password: str | None) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x0a" + _field(client_id)
    for value in (username, password):
        if value is not None:
            body += _field(value.encode("utf-8"))
    length, encoded = len(body), b""
    while True:  # MQTT's variable-length "remaining length"
        length, digit = divmod(length, 128)
        encoded += bytes([digit | (0x80 if length else 0)])
        if not length:
            return b"\x10" + encoded + body


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class PrivateInfluxDB(PrivateServer):
    """InfluxDB 1.x (``influxd``) with HTTP and RPC on free 127.0.0.1 ports.

    Every other listener is disabled; usage reporting and the ``_internal`` monitor
    store are off; meta, data and WAL live under the work directory. ``auth_enabled``
    turns on HTTP authentication (1.x then lets the first ``CREATE USER ... WITH ALL
    PRIVILEGES`` through without credentials). ``extra_config`` is appended as is, so it
    can only add sections that the generated file does not already have.
    """

    binary = "influxd"
    package = "influxdb"
    port_count = 2  # HTTP API, RPC (backup/restore; cannot be disabled in 1.x)

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        auth_enabled: bool = False,
        extra_config: str = "",
        ready_timeout: float = READY_TIMEOUT,
        outlive_parent: bool = False,
    ) -> None:
        super().__init__(
            workdir, extra_config=extra_config, ready_timeout=ready_timeout, outlive_parent=outlive_parent
        )
        self._auth_enabled = auth_enabled

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def rpc_port(self) -> int:
        """The backup/restore RPC port (moved off the default 8088)."""
        return self._require_ports()[1]

    def _environment(self) -> dict[str, str]:
        # INFLUXDB_* variables override the config file; keep ours authoritative.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _command_line(self, binary: str, config: Path) -> list[str]:
        return [binary, "-config", str(config)]

    def _is_ready(self, ports: tuple[int, ...]) -> bool:
        return influx_ping_ok(LOOPBACK, ports[0])

    def _config_text(self, ports: tuple[int, ...]) -> str:
        root = self.workdir / "influxdb"
        disabled = "".join(
            f"[[{section}]]\n  enabled = false\n" for section in ("graphite", "collectd", "opentsdb", "udp")
        )
        # Debian's 1.6.7 renamed reporting-disabled to reporting-enabled; unknown keys are
        # ignored, so both spellings are written.
        return f"""# written by testbed.servers.PrivateInfluxDB
reporting-disabled = true
reporting-enabled = false
bind-address = "{LOOPBACK}:{ports[1]}"

[meta]
  dir = "{root / "meta"}"
  logging-enabled = false

[data]
  dir = "{root / "data"}"
  wal-dir = "{root / "wal"}"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{ports[0]}"
  auth-enabled = {"true" if self._auth_enabled else "false"}
  log-enabled = false
  suppress-write-log = true
  access-log-path = ""
  pprof-enabled = false
  unix-socket-enabled = false

[ifql]
  enabled = false

{disabled}
[continuous_queries]
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

{self._extra_config}
"""


def influx_ping_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether ``GET /ping`` on ``host:port`` answers 204 from an InfluxDB."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return response.status == 204 and response.getheader("X-Influxdb-Version") is not None


# -- PostgreSQL ---------------------------------------------------------------------------

POSTGRES_USER = "puhui"  # the cluster's superuser (initdb --username)
_POSTGRES_ACCOUNT = "postgres"  # the system account a root run drops to (Debian's package makes it)


class PostgresTls(typing.NamedTuple):
    """The server's certificate and key (PEM), and the CA that signed it (the ready probe and
    :meth:`PrivatePostgres.conninfo` verify the server against it)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def postgres_bin_dir() -> Path:
    """The folder of ``initdb``, ``postgres`` and ``pg_ctl``: on PATH, else Debian's
    ``/usr/lib/postgresql/<version>/bin`` (the newest version installed)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).parent
    candidates = Path("/usr/lib/postgresql").glob("*/bin/initdb")
    found = [p.parent for p in candidates if (p.parent / "postgres").is_file()]
    if not found:
        raise ServerBinaryNotFound(
            "initdb not found on PATH nor in /usr/lib/postgresql/*/bin: install the Debian package "
            "'postgresql' (apt-get install postgresql, or make system-deps)"
        )
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


class PrivatePostgres(PrivateServer):
    """PostgreSQL on a free 127.0.0.1 port: a cluster of its own (``initdb`` at the first start)
    in the work directory, its unix socket there too, password authentication (SCRAM-SHA-256)
    for the superuser ``puhui`` with a generated password (file ``password``, mode 0600).

    With ``tls`` the server speaks TLS only (``hostssl`` lines): clients verify it against
    ``tls.ca_file``. Run as root, initdb and the server run as the system account ``postgres``
    (both refuse root), which then owns the work directory; its parent folders must let that
    account through (a fresh temporary directory does).

    Stopping is PostgreSQL's fast shutdown (SIGINT: sessions ended, a checkpoint written);
    ``kill()`` is a crash (SIGKILL of the postmaster), recovered from the WAL at the next start.
    """

    binary = "postgres"
    package = "postgresql"

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        tls: PostgresTls | None = None,
        extra_config: str = "",
        ready_timeout: float = READY_TIMEOUT,
        outlive_parent: bool = False,
    ) -> None:
        super().__init__(
            workdir, extra_config=extra_config, ready_timeout=ready_timeout, outlive_parent=outlive_parent
        )
        self.tls = tls

    @property
    def user(self) -> str:
        return POSTGRES_USER

    @property
    def password_file(self) -> Path:
        """The superuser's password (mode 0600, owned by the user who started the server)."""
        return self.workdir / "password"

    @property
    def password(self) -> str:
        return self.password_file.read_text(encoding="ascii").strip()

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.workdir / "socket"

    def conninfo(self, dbname: str = "postgres", *, port: int | None = None) -> dict[str, str | int]:
        """Keyword arguments of ``psycopg.connect`` for ``dbname`` as the superuser (TCP,
        verify-full against ``tls.ca_file`` when the server has TLS)."""
        info: dict[str, str | int] = {
            "host": LOOPBACK, "port": port or self.port, "dbname": dbname, "user": self.user,
            "password": self.password, "connect_timeout": 5,
        }  # fmt: skip
        if self.tls is None:
            info["sslmode"] = "disable"
        else:
            info.update(sslmode="verify-full", sslrootcert=str(self.tls.ca_file))
        return info

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` (owned by the superuser)."""
        self._admin(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE name``, ending its open sessions first."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg  # the driver only where a cluster is used

        with psycopg.connect(**self.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(sql.encode())

    # -- the cluster ---------------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            raise ServerError(f"{self.binary} is already running (pid {self.pid})")
        bin_dir = postgres_bin_dir()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="puhui-postgres-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._init_cluster(bin_dir)
        return super().start()

    def stop(self) -> None:
        """Fast shutdown (SIGINT), wait, then SIGKILL. Idempotent; port and data are kept."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _binary_path(self) -> str:
        return str(postgres_bin_dir() / "postgres")

    def _init_cluster(self, bin_dir: Path) -> None:
        account = _drop_to_account()
        if account is not None:
            _check_reachable(self.workdir, account)
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
        password = secrets.token_urlsafe(32)
        _write_private(self.password_file, password + "\n", None)
        pwfile = self.workdir / "initdb-password"
        _write_private(pwfile, password + "\n", account)
        for folder in (self.socket_dir,):
            folder.mkdir(mode=0o700, exist_ok=True)
            if account is not None:
                os.chown(folder, account.pw_uid, account.pw_gid)
        if self.tls is not None:
            _write_private(self.workdir / "server.crt", self.tls.cert_file.read_text(), account)
            _write_private(self.workdir / "server.key", self.tls.key_file.read_text(), account)
        command = [
            *_as_account(account), str(bin_dir / "initdb"), "--pgdata", str(self.data_dir),
            "--username", POSTGRES_USER, "--pwfile", str(pwfile), "--auth", "scram-sha-256",
            "--encoding", "UTF8", "--locale", "C", "--no-instructions",
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        finally:
            pwfile.unlink()
        if done.returncode != 0:
            raise ServerStartError(
                f"initdb exited with status {done.returncode}\n  command: {shlex.join(command)}\n"
                f"--- output ---\n{done.stdout}{done.stderr}"
            )

    def _command_line(self, binary: str, config: Path) -> list[str]:
        return [*_as_account(_drop_to_account()), binary, "-c", f"config_file={config}"]

    def _config_text(self, ports: tuple[int, ...]) -> str:
        hba = self.workdir / "pg_hba.conf"
        kind = "host" if self.tls is None else "hostssl"
        hba.write_text(
            "# written by testbed.servers.PrivatePostgres\n"
            "local all all scram-sha-256\n"
            f"{kind} all all {LOOPBACK}/32 scram-sha-256\n",
            encoding="utf-8",
        )
        ssl = "ssl = off\n"
        if self.tls is not None:
            ssl = (
                "ssl = on\n"
                f"ssl_cert_file = '{self.workdir / 'server.crt'}'\n"
                f"ssl_key_file = '{self.workdir / 'server.key'}'\n"
                "ssl_min_protocol_version = 'TLSv1.2'\n"
            )
        return (
            "# written by testbed.servers.PrivatePostgres\n"
            f"data_directory = '{self.data_dir}'\n"
            f"hba_file = '{hba}'\n"
            f"ident_file = '{self.data_dir / 'pg_ident.conf'}'\n"
            f"listen_addresses = '{LOOPBACK}'\n"
            f"port = {ports[0]}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            "password_encryption = 'scram-sha-256'\n"
            f"{ssl}"
            "timezone = 'UTC'\n"
            "lc_messages = 'C'\n"
            "logging_collector = off\n"
            "log_destination = 'stderr'\n"
            "log_checkpoints = off\n"
            f"{self._extra_config}\n"
        )

    def _is_ready(self, ports: tuple[int, ...]) -> bool:
        import psycopg

        info = {**self.conninfo(port=ports[0]), "connect_timeout": 1}
        try:
            with psycopg.connect(**info) as conn:  # type: ignore[arg-type]
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True


def _drop_to_account() -> pwd.struct_passwd | None:
    """The account initdb and postgres run as when we are root (they refuse root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_POSTGRES_ACCOUNT)
    except KeyError:
        raise ServerStartError(
            f"running as root, and PostgreSQL refuses to: it would run as the system account "
            f"'{_POSTGRES_ACCOUNT}', which does not exist (Debian's 'postgresql' package creates "
            "it: apt-get install postgresql), or run as an unprivileged user"
        ) from None


def _as_account(account: pwd.struct_passwd | None) -> list[str]:
    """The command prefix that runs a program as ``account`` (nothing when None). The parent
    death signal is kept across the change of user (the kernel clears it there)."""
    if account is None:
        return []
    setpriv = find_binary("setpriv", "util-linux")
    return [setpriv, f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups",
            "--pdeathsig=keep", "--"]  # fmt: skip


def _check_reachable(folder: Path, account: pwd.struct_passwd) -> None:
    """Every parent of ``folder`` must let ``account`` through (search permission)."""
    for parent in folder.resolve().parents:
        st = parent.stat()
        if st.st_uid != account.pw_uid and not st.st_mode & stat.S_IXOTH:
            raise ServerStartError(
                f"{folder}: the PostgreSQL cluster runs as '{account.pw_name}' (not root), which "
                f"cannot pass through {parent} (mode {st.st_mode & 0o777:o}): use a work directory "
                "under /tmp, or none (a fresh temporary one)"
            )


def _write_private(path: Path, text: str, account: pwd.struct_passwd | None) -> None:
    """A new file, mode 0600, owned by ``account`` (None: by us)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
