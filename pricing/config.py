"""The one validated configuration layer.

Settings come from, highest priority first:
  1. environment variables ``PRICING_<SECTION>__<FIELD>`` (e.g. ``PRICING_JOB__PARALLELISM=4``);
  2. a TOML file: ``--config PATH`` on the CLI, else ``PRICING_CONFIG``, else ``./pricing.toml`` if present;
  3. the defaults below, which run everything on this machine.

Nothing else in the project reads ``os.environ``: code receives a ``Settings`` object.
Unknown keys are errors (``extra="forbid"``), so a typo fails at start-up, not in production.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pricing_udfs.policy import PolicySettings
from pricing_udfs.recommend.candidates import CandidateSettings
from pricing_udfs.recommend.ranking import RankingSettings

DeliveryGuarantee = Literal["exactly-once", "at-least-once"]
_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("_CONFIG_FILE", default=None)
_DEFAULT_FILE = Path("pricing.toml")
# Where flink-sql-connector-kafka relocates the Kafka client (its classes, JAAS login modules included).
CONNECTOR_KAFKA_PACKAGE = "org.apache.flink.kafka.shaded.org.apache.kafka"
# Kafka brokers reject producers whose transaction.timeout.ms exceeds this (broker default).
BROKER_MAX_TRANSACTION_TIMEOUT_MS = 900_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Topic(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=2, ge=1, le=1024)
    cleanup_policy: Literal["delete", "compact"] = Field(
        default="delete", description="for topics this tool creates; 'compact' keeps the last record per key")


class TopicsSettings(_Section):
    """Names and partition counts; ``pricing topics create`` makes them idempotently."""

    behaviour: Topic = Topic(name="behaviour-events", partitions=2)
    market: Topic = Topic(name="market-events", partitions=2)
    requests: Topic = Topic(name="price-requests", partitions=2)
    priced: Topic = Topic(name="priced-events", partitions=2)
    dead_letters: Topic = Topic(name="dead-letters", partitions=1)
    recommend_requests: Topic = Topic(name="recommend-requests", partitions=2)
    recommendations: Topic = Topic(name="recommendations", partitions=2)
    catalogue: Topic = Topic(name="catalogue", partitions=1, cleanup_policy="compact")

    def all(self) -> list[Topic]:
        return [self.behaviour, self.market, self.requests, self.priced, self.dead_letters, self.recommend_requests,
                self.recommendations, self.catalogue]

    @model_validator(mode="after")
    def _distinct(self) -> "TopicsSettings":
        names = [t.name for t in self.all()]
        if len(set(names)) != len(names):
            raise ValueError(f"topic names must be distinct, got {names}")
        return self


class KafkaSettings(_Section):
    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topics: TopicsSettings = TopicsSettings()

    def client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) settings for admin, producers and consumers."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf

    def java_client_properties(self) -> dict[str, str]:
        """The same settings for the Java client inside Flink's Kafka connector. The connector jar carries the Kafka
        client relocated under ``CONNECTOR_KAFKA_PACKAGE``, so the JAAS login module must be named there (the
        plain ``org.apache.kafka...`` class is not on its class path: "No LoginModule found")."""
        props = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            module = CONNECTOR_KAFKA_PACKAGE + (
                ".common.security.plain.PlainLoginModule"
                if self.sasl_mechanism == "PLAIN"
                else ".common.security.scram.ScramLoginModule"
            )
            password = self.sasl_password.get_secret_value() if self.sasl_password else ""
            props["sasl.mechanism"] = self.sasl_mechanism
            props["sasl.jaas.config"] = (
                f'{module} required username="{self.sasl_username or ""}" password="{password}";'
            )
        return props


class BrokerSettings(_Section):
    """The local single-node KRaft broker of ``pricing kafka start``."""

    host: str = "127.0.0.1"
    port: int = Field(default=9092, ge=1, le=65535)
    controller_port: int | None = Field(default=None, ge=1, le=65535, description="None: port + 1")
    heap: str = Field(default="512m", pattern=r"^\d+[mMgG]$")
    start_timeout_s: float = Field(default=60.0, gt=0)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


class JobSettings(_Section):
    """The streaming job's runtime knobs."""

    name: str = "pricing-engine"
    parallelism: int = Field(default=1, ge=1, le=1024)
    delivery_guarantee: DeliveryGuarantee = "exactly-once"
    checkpoint_interval_ms: int = Field(default=5_000, ge=100)
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    checkpoint_dir: str | None = Field(default=None, description="URI (s3://, file://); None: <state_dir>/checkpoints")
    transactional_id_prefix: str = Field(default="pricing-engine", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    transaction_timeout_ms: int = Field(default=600_000, ge=1_000)
    consumer_group: str = "pricing-engine"
    startup_mode: Literal["group-offsets", "earliest-offset", "latest-offset", "timestamp"] = Field(
        default="group-offsets",
        description="where the requests input starts when the job starts without state (no checkpoint or savepoint); "
        "group-offsets: the consumer group's committed offsets (earliest without them). The behaviour and market "
        "inputs start warm_start_ms before that point (warm start)",
    )
    startup_timestamp_ms: int | None = Field(
        default=None, gt=0, description="startup_mode = timestamp: the first request time (epoch ms) to read"
    )
    warm_start_ms: int = Field(
        default=24 * 3_600_000, ge=0, lt=99 * 86_400_000,
        description="on a start without state, read the behaviour and market topics from this much event time before "
        "the requests' starting point, so the first request sees the windows a job that had run through would hold "
        "(the longest window is 24 h; those topics must retain at least this much). 0: they start like the requests",
    )
    warm_start_market_ms: int | None = Field(
        default=None, ge=0, lt=99 * 86_400_000,
        description="on a start without state, read the market topic from this much event time before the requests' "
        "starting point (never less than warm_start_ms). None (default): from its earliest retained record, because "
        "list prices, costs, stock and promotions are latest values that a product may have published long ago; the "
        "market topic must retain every value still in force (README, Warm start)",
    )
    arrival_horizon_ms: int | None = Field(
        default=None, ge=0, lt=99 * 86_400_000,
        description="arrival mode: a request waits until every input that is not idle has been read up to its event "
        "time minus this (live, nothing waits; after a start on a backlog the context catches up first). "
        "None: watermark_out_of_orderness_ms + idle_timeout_ms + 1000",
    )
    restore_from: str | None = Field(
        default=None,
        min_length=1,
        description="savepoint or retained checkpoint (path or URI) to start from: its offsets and feature state "
        "win over startup_mode; None: fresh state",
    )
    start: Literal["resume", "fresh"] = Field(
        default="resume",
        description="resume: continue from the deployment's latest retained checkpoint when there is one (after a "
        "crash or a stop); fresh: start with empty state from the committed offsets (the old checkpoints are moved "
        "aside). restore_from wins over both",
    )
    bounded: bool = Field(default=False, description="stop after the offsets that were latest at start (tests, backfills)")
    watermark_out_of_orderness_ms: int = Field(default=2_000, ge=0, lt=99 * 86_400_000)
    idle_timeout_ms: int = Field(default=5_000, ge=0)
    max_clock_skew_ms: int = Field(
        default=600_000,
        ge=0,
        lt=99 * 86_400_000,
        description="a record whose event time is further ahead of the wall clock is dead-lettered (invalid_value) "
        "and does not move the watermark",
    )
    default_price_minor: int = Field(default=1_999, gt=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    restart_attempts: int = Field(default=10, ge=0, description="fixed-delay restarts before the job fails")
    restart_delay_ms: int = Field(default=5_000, ge=0)
    state_ttl_ms: int = Field(
        default=7 * 24 * 3_600_000, ge=0, description="per-key feature state kept after the key's last event; 0 = forever"
    )
    ship_jars: bool = Field(
        default=True,
        description="add the fetched connector jars to pipeline.jars; false only where the submitting client's own "
        "class path has them (the planner runs in the client): `flink run -py` inside an image with them in lib/. "
        "A job submitted with --jobmanager ships pricing-features.jar and flink-python whatever this says",
    )
    metrics_port: str | None = Field(
        default=None,
        pattern=r"^\d{1,5}(-\d{1,5})?$",
        description="serve Flink metrics for Prometheus on this port or range (9249 or 9249-9259); None: no reporter",
    )
    dead_letter_max_raw_bytes: int = Field(
        default=65_536,
        ge=0,
        le=524_288,
        description="a dead letter carries at most this many bytes of the bad record (plus its size and SHA-256), "
        "so it always fits the topic's 1 MiB record limit whatever the input",
    )
    dedupe_window_ms: int = Field(
        default=3_600_000,
        ge=1,
        description="a request whose request_id was already seen for the same product within this much event time "
        "is dead-lettered as a duplicate instead of priced again",
    )
    rest_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="local runs: port of the MiniCluster's web UI and REST API; None: a free port",
    )
    python_executable: str | None = Field(
        default=None,
        min_length=1,
        description="the Python that runs the UDFs on the TaskManagers: a path (or a name on their PATH) valid "
        "there, e.g. python3 in the images; None: the interpreter running this command (right for the local "
        "MiniCluster and for `pricing cluster`, which runs on this machine from the same venv)",
    )
    serving_mode: Literal["arrival", "event-time"] = Field(
        default="arrival",
        description="arrival: price each request as soon as it arrives, with the features of every event processed "
        "before it (windows still in event time; no watermark wait, quiet inputs hold nothing back); the low-latency "
        "mode a storefront wants. event-time: price a request once the watermark passes it, with exactly the events "
        "up to its event time (replays and the backfill give the same vectors; waits for the slowest input)",
    )
    python_bundle_size: int = Field(default=1_000, ge=1, description="rows per Python bundle")
    python_bundle_time_ms: int | None = Field(
        default=None, ge=1,
        description="max ms a bundle waits to fill; every Python stage (decode, price) can hold a row this long at "
        "low load. None: 20 in arrival mode (200 ms gave a p50 of 0.73 s there; 5 ms stalled a start on a backlog: README, Latency), 200 in event-time "
        "mode, where the watermark dominates latency",
    )
    anchor_lookback_ms: int | None = Field(
        default=None, ge=0, lt=99 * 86_400_000,
        description="at start each pricing worker rebuilds the hourly-change anchors from the priced events written "
        "in this much time before it (pricing_udfs.anchors). None: 2 h + max_clock_skew_ms (the current and the "
        "previous hour); 0: no rebuild (anchors start empty)",
    )
    anchor_seed_timeout_ms: int = Field(
        default=120_000, ge=1_000,
        description="the rebuild must reach the priced topic's high watermark taken at start within this time, or "
        "the worker fails (Flink restarts it) instead of pricing without anchors",
    )
    anchor_history_hours: int = Field(
        default=3, ge=2, le=48,
        description="hours of anchors kept per product up to its newest priced hour; a request older than that, "
        "with no price of the product in between, gets no anchor",
    )
    anchor_seed_grace_ms: int | None = Field(
        default=10_000, ge=0,
        description="exactly-once: after this long the rebuild takes a partition held by a transaction still open as "
        "read (another worker of the same job attempt, whose commit waits for this worker: parallelism above 1); "
        "None: wait for the high watermark until anchor_seed_timeout_ms",
    )

    @property
    def arrival_horizon(self) -> int:
        """``arrival_horizon_ms`` or its default: an input that is not idle is at most this far behind live traffic."""
        if self.arrival_horizon_ms is not None:
            return self.arrival_horizon_ms
        return self.watermark_out_of_orderness_ms + self.idle_timeout_ms + 1_000

    @field_validator("transaction_timeout_ms")
    @classmethod
    def _below_broker_max(cls, v: int) -> int:
        if v > BROKER_MAX_TRANSACTION_TIMEOUT_MS:
            raise ValueError(
                f"must not exceed the broker's transaction.max.timeout.ms ({BROKER_MAX_TRANSACTION_TIMEOUT_MS})"
            )
        return v

    @model_validator(mode="after")
    def _timestamp_start(self) -> "JobSettings":
        if (self.startup_mode == "timestamp") != (self.startup_timestamp_ms is not None):
            raise ValueError("startup_timestamp_ms is required with startup_mode = 'timestamp', and only with it")
        return self

    @model_validator(mode="after")
    def _checkpoints_fit_transactions(self) -> "JobSettings":
        if self.delivery_guarantee == "exactly-once" and self.checkpoint_interval_ms * 2 > self.transaction_timeout_ms:
            raise ValueError("exactly-once needs transaction_timeout_ms >= 2 * checkpoint_interval_ms")
        return self


_MEMORY_SIZE = r"^\d+[mMgG]$"


class ClusterSettings(_Section):
    """The local standalone Flink session cluster of ``pricing cluster start`` (``pricing.cluster``).

    One JobManager and ``taskmanagers`` TaskManagers, each its own process, run from the
    apache-flink wheel's distribution with files under ``<state_dir>/cluster``.
    """

    host: str = Field(default="127.0.0.1", min_length=1, description="address every process binds to and advertises")
    rest_port: int = Field(default=8081, ge=1, le=65535, description="the JobManager's REST API and web UI")
    rpc_port: int = Field(default=6123, ge=1, le=65535, description="the JobManager's RPC port (TaskManagers register there)")
    taskmanagers: int = Field(default=2, ge=1, le=16)
    slots_per_taskmanager: int = Field(default=2, ge=1, le=64)
    jobmanager_memory: str = Field(default="768m", pattern=_MEMORY_SIZE, description="JobManager process size")
    taskmanager_memory: str = Field(default="1024m", pattern=_MEMORY_SIZE, description="process size of each TaskManager")
    taskmanager_managed_memory: str = Field(
        default="128m", pattern=_MEMORY_SIZE,
        description="managed (off-heap) memory per TaskManager; the Python workers' share comes from it",
    )
    start_timeout_s: float = Field(default=120.0, gt=0, description="how long `start` waits for every TaskManager")

    @model_validator(mode="after")
    def _distinct_ports(self) -> "ClusterSettings":
        if self.rest_port == self.rpc_port:
            raise ValueError(f"rest_port and rpc_port must differ, both are {self.rest_port}")
        return self

    @property
    def rest_address(self) -> str:
        return f"{self.host}:{self.rest_port}"


class ModelSettings(_Section):
    """The model registry (``pricing models``, ``pricing train``, the job's model)."""

    registry_dir: Path | None = Field(
        default=None, description="a folder on one POSIX filesystem (a mounted volume); None: <state_dir>/models"
    )
    version: str = Field(
        default="latest", pattern=r"^(latest|v\d{8}T\d{6}Z-[0-9a-f]{8})$",
        description="the version the job serves: latest (follows promotions and rollbacks) or a pinned version id",
    )
    watch_interval_s: float = Field(
        default=10.0, gt=0, le=3_600, description="how often each Python worker checks the registry for a new version"
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto", description="where TensorFlow scores: auto (a GPU when the worker sees one), cpu, or gpu (required)"
    )
    intra_op_threads: int = Field(
        default=1, ge=0, le=1024,
        description="TensorFlow threads inside one op, per Python worker (one worker per slot: 1); 0: TensorFlow's "
        "default (one per core, per worker)",
    )
    inter_op_threads: int = Field(
        default=1, ge=0, le=1024, description="TensorFlow ops run at once, per Python worker; 0: TensorFlow's default"
    )


class RecommendSettings(_Section):
    """The recommendation path (recommend-requests in, recommendations out; README "Recommendations")."""

    enabled: bool = Field(default=True, description="read recommend-requests and answer them; false: the job "
                          "neither reads nor writes the recommendation topics")
    candidates: int = Field(default=100, ge=1, le=500, description="candidates priced and ranked per request")
    half_life_ms: int = Field(default=24 * 3_600_000, ge=60_000, description="decay of co-occurrence and popularity")
    co_window_ms: int = Field(default=3_600_000, ge=1_000, description="two products one user touches within this co-occur")
    max_neighbours: int = Field(default=50, ge=1, le=1_000, description="co-view (and co-purchase) neighbours kept per product")
    recent_per_user: int = Field(default=20, ge=1, le=1_000, description="recent products kept per user")
    max_popular: int = Field(default=200, ge=1, le=10_000, description="popular products kept per category and overall")
    lookback_ms: int = Field(default=24 * 3_600_000, ge=0, description="behaviour each worker reads back at start "
                             "to rebuild its candidate index (the catalogue is read whole)")
    catch_up_timeout_ms: int = Field(default=60_000, ge=1_000, description="how long a worker reads back at start "
                                     "before it answers with what it has")
    honour_validity_ms: int = Field(default=15 * 60_000, ge=0, description="a recommended price is charged when the "
                                    "same user asks for the product within this time; 0: offers are not honoured")
    ranking: RankingSettings = RankingSettings()

    def candidate_settings(self) -> CandidateSettings:
        return CandidateSettings(half_life_ms=self.half_life_ms, co_window_ms=self.co_window_ms,
                                 max_neighbours=self.max_neighbours, recent_per_user=self.recent_per_user,
                                 max_popular=self.max_popular, n_candidates=self.candidates)  # fmt: skip


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PRICING_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Field(default=Path(".pricing"), description="broker data, logs, jars, artefacts")
    kafka: KafkaSettings = KafkaSettings()
    broker: BrokerSettings = BrokerSettings()
    job: JobSettings = JobSettings()
    models: ModelSettings = ModelSettings()
    policy: PolicySettings = PolicySettings()
    cluster: ClusterSettings = ClusterSettings()
    recommend: RecommendSettings = RecommendSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def registry_dir(settings: Settings) -> Path:
    """Where the registry is: ``[models] registry_dir``, else ``<state_dir>/models``."""
    return settings.models.registry_dir or settings.state_dir / "models"


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``overrides`` win over everything (used by tests and the CLI)."""
    path = _resolve_config_file(config_file)
    token = _CONFIG_FILE.set(path)
    try:
        return Settings(**overrides)
    finally:
        _CONFIG_FILE.reset(token)


def _resolve_config_file(config_file: Path | str | None) -> Path | None:
    if config_file is None:
        env = os.environ.get("PRICING_CONFIG")
        if env:
            config_file = env
        elif _DEFAULT_FILE.is_file():
            return _DEFAULT_FILE
        else:
            return None
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return path
