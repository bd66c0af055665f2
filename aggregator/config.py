"""The aggregator's configuration: one closed YAML file.

Example (``puhui aggregator run --config aggregator.yaml``)::

    mqtt:
      host: broker.example
      port: 8883
      tls: {ca_file: pki/ca.crt, cert_file: pki/aggregator.crt, key_file: pki/aggregator.key}
    store: {path: /var/lib/puhui/evidence.sqlite3}   # or, shared by several aggregators:
    # store: {path: ..., postgres: {host: db.example, dbname: puhui, user: puhui,
    #         password: {file: pg-password}, sslrootcert: pki/db-ca.crt}}
    influx:
      url: http://127.0.0.1:8086
      database: puhui
      username: puhui
      password: {file: influx-password}     # mode 0600; or {env: PUHUI_INFLUX_PASSWORD}
    key_file: /etc/puhui/aggregator-key.pem

Secrets are never inline: a password or token names a file (mode 0600) or an environment
variable. The broker link is TLS unless ``insecure: true`` says otherwise. Relative paths
are relative to the config file's directory. Unknown keys are errors, and every problem is
reported with the file and the path inside it
(``aggregator.yaml: influx.url: ...``). Validation does no I/O beyond reading the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregator.errors import ConfigError
from common.mqtt import BrokerAddress
from common.tls import SecretSource, TlsSettings
from common.yaml_models import issues_from, read_yaml
from evidence.wire import SHARE_GROUP


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Closed):
    """The broker batches arrive through, in a persistent session under ``client_id``: the
    broker keeps QoS 1 batches published while the aggregator is down and delivers them at
    its restart. Aggregators sharing the load (one ``share_group``) need distinct client
    ids (two with one id take the session from each other); the broker keeps dealing a
    share of the batches to a stopped member, delivered when it returns or, resent by the
    gateway after ``resend_after_s``, to another member.

    ``failover``: more nodes of a clustered broker, tried in order when ``host:port`` cannot
    be reached (the session lives in the cluster, docs/scale.md). ``share_group: null``
    subscribes to every gateway's batches without a shared subscription, for a broker that
    has none (NATS, RabbitMQ 3.10): then one aggregator per broker."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    failover: tuple[BrokerAddress, ...] = ()
    tls: TlsSettings | None = None  # None only with insecure: true (plain text on the wire)
    insecure: bool = False
    username: str | None = None
    password: SecretSource | None = None  # {file: PATH} (0600) or {env: VARIABLE}
    client_id: str = Field(default="puhui-aggregator", min_length=1, max_length=64)
    share_group: str | None = SHARE_GROUP
    keepalive_s: int = Field(default=30, ge=5)
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_password(cls, value: Any, info: ValidationInfo) -> Any:
        return _not_inline(value, str(info.field_name))

    @model_validator(mode="after")
    def _secure_by_default(self) -> Self:
        if self.tls is None and not self.insecure:
            raise ValueError(
                "the broker link needs tls (ca_file, and cert_file + key_file for a client "
                "certificate); plain text only with insecure: true"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        return self


def _not_inline(value: Any, name: str) -> Any:
    if isinstance(value, str):
        raise ValueError(
            f"a {name} is not written in a config file: put it in a file (mode 0600) and give "
            f"{name}: {{file: PATH}}, or name an environment variable: {name}: {{env: VARIABLE}}"
        )
    return value


class PostgresSettings(_Closed):
    """The evidence in PostgreSQL (several aggregators, replicated and backed up evidence;
    docs/scale.md): TLS verifying the server's name against ``sslrootcert`` (``verify-full``)
    unless ``insecure: true``; the password from a file (mode 0600) or an environment variable."""

    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = Field(min_length=1)
    user: str = Field(min_length=1)
    password: SecretSource | None = None  # {file: PATH} (0600) or {env: VARIABLE}
    sslmode: Literal["verify-full", "verify-ca"] = "verify-full"
    sslrootcert: Path | None = None  # the CA that signed the server's certificate
    insecure: bool = False  # plain text on the wire (sslmode disable): only with this
    connect_timeout_s: int = Field(default=10, ge=1)

    @field_validator("password", mode="before")
    @classmethod
    def _no_inline_password(cls, value: Any, info: ValidationInfo) -> Any:
        return _not_inline(value, str(info.field_name))

    @model_validator(mode="after")
    def _secure_by_default(self) -> Self:
        if self.insecure and self.sslrootcert is not None:
            raise ValueError("sslrootcert is for TLS: drop it, or insecure: true")
        if not self.insecure and self.sslrootcert is None:
            raise ValueError(
                "the database link needs TLS: sslrootcert (the CA of the server's certificate); "
                "plain text only with insecure: true"
            )
        return self


class StoreSettings(_Closed):
    """Where the evidence lives. ``path``: the SQLite file, which holds the evidence unless
    ``postgres`` is given, and always this aggregator's statements, units and push outbox."""

    path: Path
    postgres: PostgresSettings | None = None


class InfluxSettings(_Closed):
    url: str = Field(pattern=r"^https?://")
    database: str = Field(min_length=1)
    retention_policy: str | None = None
    tls: TlsSettings | None = None  # for https:// (ca_file pins the server's CA)
    username: str | None = None
    password: SecretSource | None = None  # {file: PATH} (0600) or {env: VARIABLE}
    token: SecretSource | None = None
    create_database: bool = True  # CREATE DATABASE at start (a no-op when it exists)
    measurement: str = "puhui_interval"
    batch_measurement: str = "puhui_batch"
    max_batches_per_write: int = Field(default=8, ge=1)  # stored batches combined in one request
    concurrent_writes: int = Field(default=2, ge=1)  # requests in flight at once
    timeout_s: float = Field(default=10.0, gt=0)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)

    @field_validator("password", "token", mode="before")
    @classmethod
    def _no_inline_secret(cls, value: Any, info: ValidationInfo) -> Any:
        return _not_inline(value, str(info.field_name))

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> Self:
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("give either token or username/password, not both")
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("tls is for an https:// url")
        return self


class LimitSettings(_Closed):
    max_batch_bytes: int = Field(default=8_000_000, ge=1024)
    record_skew_s: float = Field(default=300.0, ge=0)  # record timestamps vs the batch's created_ms
    batch_ahead_s: float = Field(default=300.0, ge=0)  # batch created_ms ahead of the aggregator clock
    # created_ms of a batch vs the one before it in the chain: back at all, or forward by more
    clock_jump_s: float = Field(default=7 * 86400.0, gt=0)
    kept_rejected_bytes: int = Field(default=4096, ge=0)  # of a refused payload: this prefix and its hash
    rejection_rows_per_source: int = Field(default=1000, ge=1)  # then refusals are only counted


class IngestSettings(_Closed):
    """Group commit: batches staged while the store commits wait, then go in one transaction."""

    max_group_batches: int = Field(default=32, ge=1)  # batches (and rejections) per transaction
    queue_batches: int = Field(default=16, ge=1)  # staged, waiting for the store: then backpressure
    # Several aggregators (store.postgres) share each gateway's batches: a batch whose predecessor
    # is not stored yet is held (not stored, not acknowledged) up to this long, so the chain is
    # stored in order; then it is stored as a gap (filled when the predecessor comes). None: 10 s
    # with store.postgres, 0 (no holding) with SQLite alone. Wall seconds (the network's time).
    reorder_wait_s: float | None = Field(default=None, ge=0, le=3600)


class PlausibilitySettings(_Closed):
    nameplate_factor: float = Field(default=1.2, gt=0)  # allowed energy = rated power x hours x factor
    min_coverage: float = Field(default=0.5, ge=0, le=1)  # samples / expected below this: low_coverage
    delta_tolerance_kwh: float = Field(default=1e-6, ge=0)  # |end - start - delta| allowed


class ServerTls(_Closed):
    """The API's server certificate and key (the key file mode 0600)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # also require client certificates signed by this CA


class ApiSettings(_Closed):
    """``puhui aggregator api``: the platform API (HTTPS; plain HTTP only with insecure: true)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)  # 0: any free port (tests)
    tls: ServerTls | None = None
    insecure: bool = False
    max_page: int = Field(default=1000, ge=1, le=100_000)  # items per page, at most
    params_dir: Path | None = None  # parameter sets for packages (default: the shipped ones)
    # platforms whose signed receipts POST /v1/receipts takes: name -> public key file (PEM), pinned
    platforms: dict[str, Path] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _secure_by_default(self) -> Self:
        if self.tls is None and not self.insecure:
            raise ValueError("the API needs tls (cert_file, key_file); plain HTTP only with insecure: true")
        return self


class ProgrammeSettings(_Closed):
    """Statements signed on a calendar for the units in the database (``puhui aggregator units``)."""

    period: Literal["month", "week", "day"] = "month"  # calendar periods, China time
    settle_hours: float = Field(default=48.0, ge=0)  # after a period ends: time for late batches
    check_every_s: float = Field(default=300.0, gt=0)  # how often to look for due periods and late data
    production: bool = False  # refuse to sign with a parameter set that is not filed and valid
    # scenario -> the parameter set file its units are credited with; a scenario not named here
    # takes the set the precedence rule picks from params_dir (national > local > group)
    parameter_sets: dict[Literal["pv", "ev_charging", "clean_heating"], Path] = Field(default_factory=dict)
    params_dir: Path | None = None  # default: the shipped config/methodologies
    baselines_file: Path | None = None  # heating units' recorded coal use (puhui-heating-baseline/1)


class PushTarget(_Closed):
    """One platform that takes statements by push (``puhui aggregator push``, docs/platform-api.md):
    every stored statement (or its evidence package) is POSTed to ``url`` once, in creation
    order, with an ``Idempotency-Key`` and the bearer ``token``; HTTPS unless ``insecure: true``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # the outbox's key: keep it stable
    url: str = Field(pattern=r"^https?://[^\s]+$")
    what: Literal["statement", "package"] = "statement"  # the signed document, or its evidence package
    tls: TlsSettings | None = None  # ca_file pins the receiver's CA (cert_file + key_file: client cert)
    insecure: bool = False  # plain http:// only with this
    token: SecretSource | None = None  # {file: PATH} (0600) or {env: VARIABLE}: sent as Bearer
    timeout_s: float = Field(default=30.0, gt=0)  # one POST, connect to answer
    retry_initial_s: float = Field(default=1.0, gt=0)  # first wait after a 5xx, timeout, refused connection
    retry_max_s: float = Field(default=600.0, gt=0)  # backoff cap
    poll_s: float = Field(default=10.0, gt=0)  # how often to look for new statements when idle

    @field_validator("token", mode="before")
    @classmethod
    def _no_inline_token(cls, value: Any, info: ValidationInfo) -> Any:
        return _not_inline(value, str(info.field_name))

    @model_validator(mode="after")
    def _secure_by_default(self) -> Self:
        https = self.url.startswith("https://")
        if not https and not self.insecure:
            raise ValueError(
                "a push url is https:// (tls.ca_file pins the receiver's CA); http only with insecure: true"
            )
        if self.tls is not None and not https:
            raise ValueError("tls is for an https:// url")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s is less than retry_initial_s")
        return self


class AggregatorConfig(_Closed):
    """Everything ``puhui aggregator run`` needs."""

    mqtt: MqttSettings  # the broker link, always explicit (TLS, or insecure: true)
    store: StoreSettings
    influx: InfluxSettings
    key_file: Path
    limits: LimitSettings = Field(default_factory=LimitSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    plausibility: PlausibilitySettings = Field(default_factory=PlausibilitySettings)
    api: ApiSettings | None = None
    programme: ProgrammeSettings | None = None  # None: statements only when someone asks
    push: list[PushTarget] = Field(default_factory=list)  # platforms that take statements by push

    @field_validator("push")
    @classmethod
    def _distinct_targets(cls, targets: list[PushTarget]) -> list[PushTarget]:
        names = [t.name for t in targets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"push target names must differ: {', '.join(twice)} given more than once")
        return targets

    def resolved(self, base: Path) -> AggregatorConfig:
        """Paths made absolute against ``base`` (the config file's directory)."""
        postgres = self.store.postgres
        if postgres is not None:
            root = None if postgres.sslrootcert is None else base / postgres.sslrootcert
            postgres = postgres.model_copy(
                update={"sslrootcert": root, "password": _resolved(postgres.password, base)}
            )
        store = self.store.model_copy(update={"path": base / self.store.path, "postgres": postgres})
        mqtt_paths = {
            "tls": _resolved_tls(self.mqtt.tls, base),
            "password": _resolved(self.mqtt.password, base),
        }
        mqtt = self.mqtt.model_copy(update=mqtt_paths)
        influx = self.influx.model_copy(
            update={
                "tls": _resolved_tls(self.influx.tls, base),
                "password": _resolved(self.influx.password, base),
                "token": _resolved(self.influx.token, base),
            }
        )
        api = self.api
        if api is not None:
            tls = api.tls
            if tls is not None:
                paths = {k: str(base / v) for k, v in tls.model_dump().items() if v is not None}
                tls = tls.model_copy(update=paths)
            params = None if api.params_dir is None else base / api.params_dir
            platforms = {name: base / key for name, key in api.platforms.items()}
            api = api.model_copy(update={"tls": tls, "params_dir": params, "platforms": platforms})
        programme = self.programme
        if programme is not None:
            sets = {k: base / v for k, v in programme.parameter_sets.items()}
            baselines = None if programme.baselines_file is None else base / programme.baselines_file
            params_dir = None if programme.params_dir is None else base / programme.params_dir
            programme = programme.model_copy(
                update={"parameter_sets": sets, "baselines_file": baselines, "params_dir": params_dir}
            )
        push = [
            t.model_copy(update={"tls": _resolved_tls(t.tls, base), "token": _resolved(t.token, base)})
            for t in self.push
        ]
        return self.model_copy(
            update={
                "store": store,
                "key_file": base / self.key_file,
                "mqtt": mqtt,
                "influx": influx,
                "api": api,
                "programme": programme,
                "push": push,
            }
        )


def _resolved(source: SecretSource | None, base: Path) -> SecretSource | None:
    if source is None or source.file is None:
        return source
    return source.model_copy(update={"file": str(base / source.file)})


def _resolved_tls(tls: TlsSettings | None, base: Path) -> TlsSettings | None:
    if tls is None:
        return None
    paths = {k: str(base / v) for k, v in tls.model_dump().items() if v is not None}
    return tls.model_copy(update=paths)


def parse_config(data: Any, file: str) -> AggregatorConfig:
    """Validate already-parsed YAML; raise :class:`ConfigError` listing every problem."""
    try:
        return AggregatorConfig.model_validate(data)
    except ValidationError as exc:
        issues = issues_from(exc, AggregatorConfig)
        raise ConfigError("\n".join(i.render(file) for i in issues)) from exc


def load_config(path: str | Path) -> AggregatorConfig:
    """Read and validate a YAML config file; relative paths resolve against its folder."""
    p = Path(path)
    data, issues = read_yaml(p)
    if issues:
        raise ConfigError("\n".join(i.render(str(p)) for i in issues))
    return parse_config(data if data is not None else {}, str(p)).resolved(p.parent.absolute())
