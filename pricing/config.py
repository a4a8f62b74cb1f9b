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
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pricing.secrets import read_secret_files, write_secret_files
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pricing_udfs.kafka_client import (
    SECRET_FILES,
    KafkaClient,
    KafkaSecretError,
    SaslMechanism,
    SecurityProtocol,
)
from pricing_udfs.experiment import ExperimentConfig
from pricing_udfs.policy import PolicySettings
from pricing_udfs.privacy import PSEUDONYM_KEY_FILE, PrivacyConfig
from pricing_udfs.recommend.candidates import CandidateSettings
from pricing_udfs.recommend.ranking import RankingSettings

DeliveryGuarantee = Literal["exactly-once", "at-least-once"]
_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("_CONFIG_FILE", default=None)
_DEFAULT_FILE = Path("pricing.toml")
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
    """How every client connects. Secrets are ``SecretStr`` (never printed); the job's own clients read them from
    files at run time (``[secrets] dir``, :mod:`pricing_udfs.kafka_client`), never from the SQL text."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = Field(
        default=None, description="CA certificates the brokers' certificates chain to: a PEM file, or a PKCS12 "
        "truststore when the name ends in .p12/.pfx (then ssl_ca_password); None: the system's CAs")
    ssl_ca_password: SecretStr | None = None
    ssl_keystore_location: str | None = Field(
        default=None, description="the client's certificate and key for mutual TLS, a PKCS12 file")
    ssl_keystore_password: SecretStr | None = None
    ssl_endpoint_identification: bool = Field(
        default=True, description="check that the broker's certificate names the host connected to")
    topics: TopicsSettings = TopicsSettings()

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaSettings":
        self.client("/")  # the same rules as the shipped client's, checked at start-up
        return self

    def _secret_values(self) -> dict[str, str]:
        return {name: value.get_secret_value() for name in SECRET_FILES
                if (value := getattr(self, name)) is not None}  # fmt: skip

    def client(self, secrets_dir: str | Path | None) -> KafkaClient:
        """What the job ships to its clients: no secret values, only the folder their files are in."""
        return KafkaClient(bootstrap_servers=self.bootstrap_servers, security_protocol=self.security_protocol,
                           sasl_mechanism=self.sasl_mechanism, sasl_username=self.sasl_username,
                           ssl_ca_location=self.ssl_ca_location, ssl_keystore_location=self.ssl_keystore_location,
                           ssl_endpoint_identification=self.ssl_endpoint_identification,
                           secrets_dir=str(secrets_dir) if secrets_dir is not None else None)  # fmt: skip

    def client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) settings for the control plane's admin clients, producers and consumers."""
        return self.client("/").config(self._secret_values())

    def write_secrets(self, folder: Path) -> KafkaClient:
        """Write the secret settings into ``folder`` (created private, files mode 0600) and return the client
        that reads them there: for a job whose ``[secrets] dir`` is not given."""
        from pricing.secrets import write_secret_files

        client, values = self.client(folder), self._secret_values()
        if missing := sorted(client.secrets - values.keys()):
            raise KafkaSecretError(f"the Kafka settings need {', '.join(missing)} (settings, PRICING_KAFKA__<NAME>, or "
                                   "files in [secrets] dir)")  # fmt: skip
        write_secret_files(folder, {SECRET_FILES[name]: values[name] for name in client.secrets})
        return client


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
    python_workers: Literal["loopback", "process"] = Field(
        default="loopback",
        description="local runs (the MiniCluster): loopback runs the Python functions inside this command's process, "
        "all on its one interpreter lock; process starts them as separate worker processes, one per slot, as a "
        "cluster's TaskManagers do. Ignored with a JobManager (always process there)",
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
        description="max ms a bundle waits to fill; every Python stage (price, recommend) can hold a row this long "
        "at low load. None: 5 in arrival mode (README, Latency), 200 in event-time mode, where the watermark "
        "dominates latency",
    )
    buffer_timeout_ms: int | None = Field(
        default=None, ge=0,
        description="execution.buffer-timeout.interval: the longest a network buffer between two tasks waits to fill "
        "before it is sent; every exchange on a request's path can hold it this long at low load. None: 2 in arrival "
        "mode (Flink's 100 ms put p50 near 300 ms: README, Latency), Flink's 100 in event-time mode",
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
                                 max_popular=self.max_popular, n_candidates=self.candidates,
                                 user_ttl_ms=self.lookback_ms)  # fmt: skip


class LearnSettings(_Section):
    """``[learn]``: ``pricing learn``, the learning loop's training and its promotion gate (``pricing.learn``)."""

    holdout_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="the newest share of the logged rows, never trained on, that the gate "
        "judges both models on")
    min_rows: int = Field(default=500, ge=10, description="fewer labelled rows in the range: no challenger is trained")
    min_holdout_rows: int = Field(
        default=100, ge=2, description="fewer holdout rows with a propensity (and a list price and cost): no verdict")
    log_loss_tolerance: float = Field(
        default=0.005, ge=0, le=1, description="the challenger's holdout log-loss may exceed the champion's by this "
        "much (nats) and still be promoted")
    max_calibration_error: float = Field(
        default=0.1, gt=0, le=1, description="without a champion: the challenger's holdout calibration error "
        "(ECE, 10 bins) must not exceed this")
    min_effective_rows: float = Field(
        default=20.0, ge=1, description="each policy's off-policy estimates must rest on at least this many "
        "logs (Kish's effective sample size of the weights)")
    max_unsupported_share: float = Field(
        default=0.05, ge=0, le=1, description="at most this share of the holdout may have been served with "
        "certainty (propensity 1) at a price the challenger would not serve: the logs say nothing of it there")
    kernel_bandwidth: float = Field(
        default=0.02, ge=0, lt=1, description="a logged price within this relative distance of the policy's price "
        "(|a - b| / list price) counts, by a triangular kernel; 0: exact matches only")
    epochs: int = Field(default=20, ge=1, le=1_000, description="at most this many epochs per challenger")
    seed: int = Field(default=0, ge=0, description="the challenger's training seed")
    ensemble_size: int = Field(
        default=1, ge=1, le=32, description="B > 1: the challenger is a bootstrap ensemble of B networks (one registry "
        "version), for [policy] exploration = 'thompson'; 1: a single network")


class SecretsSettings(_Section):
    """Where the job's clients read secrets at run time: one file each (``kafka.password``, ``kafka.ca.password``,
    ``kafka.keystore.password``, ``pseudonym.key``), exactly the value, no newline."""

    dir: Path | None = Field(
        default=None, description="a folder every task manager can read (in Kubernetes a mounted Secret); its "
        "files also fill the secret settings left unset. None: the job writes the secret settings into "
        "<state_dir>/secrets (mode 0600) itself")


class PrivacySettings(_Section):
    """Pseudonymous users (:mod:`pricing_udfs.privacy`) and what dead letters keep."""

    pseudonym_key_id: str = Field(
        default="k1", pattern=r"^[a-z0-9]{1,8}$",
        description="names the key: part of every pseudonym, so a new key (rotation) makes new pseudonyms")
    pseudonym_key: SecretStr | None = Field(
        default=None, description="the HMAC-SHA-256 key (at least 32 bytes); None: the file pseudonym.key in the "
        "secrets folder, made at random on first use when the job writes that folder itself")
    dead_letter_payload: Literal["raw", "digest"] = Field(
        default="raw", description="'digest': a dead letter keeps only the bad record's size and SHA-256, not its "
        "bytes (which may hold personal data)")

    @field_validator("pseudonym_key")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().encode()) < 32:
            raise ValueError("pseudonym_key must be at least 32 bytes")
        return v


class ArchiveSettings(_Section):
    """The archive job (``jobs/archive.py``, ``pricing archive run``): every topic to files, exactly once."""

    path: str | None = Field(
        default=None, description="where the files go: a folder or a URI Flink can write (file://, s3://); None: "
        "<state_dir>/archive. Layout: <path>/<topic>/dt=YYYY-MM-DD/hour=HH/ (pricing.archive_layout)")
    topics: list[Literal["behaviour", "market", "requests", "priced", "dead_letters", "recommend_requests",
                         "recommendations", "catalogue"]] | None = Field(
        default=None, description="which of [kafka.topics] to archive (their keys there); None: all of them")
    consumer_group: str = Field(
        default="pricing-archive", min_length=1, pattern=r"^[A-Za-z0-9._-]+$",
        description="the archive's own consumer group; it also names its checkpoints, apart from the pricing job's")
    checkpoint_interval_ms: int = Field(
        default=60_000, ge=100, description="files become visible at each checkpoint, one per partition and hour "
        "per writer: longer means fewer, larger files and later visibility")
    codec: Literal["deflate", "null"] = Field(default="deflate", description="the Avro container files' codec")
    max_file_bytes: int = Field(default=128 << 20, ge=1 << 20, description="a file rolls at this size, or at the "
                                "next checkpoint, whichever comes first")

    def root(self, state_dir: Path) -> str:
        """The archive's location as Flink wants it: a URI (local folders become file: URIs)."""
        if self.path is None:
            return (state_dir / "archive").resolve().as_uri()
        return self.path if "://" in self.path else Path(self.path).resolve().as_uri()


# The secret settings that [secrets] dir fills when they are unset: (section, field) -> file name.
_SECRET_FIELDS = {**{("kafka", name): file for name, file in SECRET_FILES.items()},
                  ("privacy", "pseudonym_key"): PSEUDONYM_KEY_FILE}


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
    secrets: SecretsSettings = SecretsSettings()
    privacy: PrivacySettings = PrivacySettings()
    learn: LearnSettings = LearnSettings()
    archive: ArchiveSettings = ArchiveSettings()
    experiment: ExperimentConfig | None = Field(
        default=None, description="a live champion/challenger split ([experiment] id, challenger_version, share; "
        "pricing_udfs.experiment); None: the registry's latest serves everyone")

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """Secret settings left unset are read from ``[secrets] dir`` when their file is there."""
        if not isinstance(data, dict):
            return data
        secrets = data.get("secrets")
        folder = secrets.get("dir") if isinstance(secrets, dict) else getattr(secrets, "dir", None)
        if not folder:
            return data
        found = read_secret_files(Path(folder), list(_SECRET_FIELDS.values()))
        data = dict(data)
        for (section, name), file in _SECRET_FIELDS.items():
            if file not in found:
                continue
            current = data.get(section)
            if isinstance(current, BaseModel):
                if getattr(current, name) is None:
                    data[section] = current.model_copy(update={name: SecretStr(found[file])})
            else:
                current = dict(current or {})
                current.setdefault(name, found[file])
                data[section] = current
        return data

    def secrets_dir(self) -> Path:
        """Where the job's clients read the secret files: ``[secrets] dir``, else ``<state_dir>/secrets``."""
        return (self.secrets.dir or self.state_dir / "secrets").absolute()

    def privacy_config(self) -> PrivacyConfig:
        """What the job's workers need to pseudonymise users: the key's file (not the key) and its id."""
        return PrivacyConfig(secrets_dir=str(self.secrets_dir()), key_id=self.privacy.pseudonym_key_id,
                             dead_letter_payload=self.privacy.dead_letter_payload)  # fmt: skip

    def job_kafka_client(self) -> KafkaClient:
        """The Kafka client settings the job ships: secrets by file in :meth:`secrets_dir`."""
        return self.kafka.client(self.secrets_dir())

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


class SecretsError(RuntimeError):
    """A secret the job needs is not where its clients will look; the message names files, never values."""


def prepare_job_secrets(settings: Settings) -> Path:
    """Make the secret files the job's clients read: written from the settings into ``<state_dir>/secrets``
    when ``[secrets] dir`` is unset, else checked to be there. Returns the folder."""
    folder = settings.secrets_dir()
    client = settings.job_kafka_client()
    if settings.secrets.dir is None:
        settings.kafka.write_secrets(folder)
        prepare_pseudonym_key(settings)
        return folder
    needed = [SECRET_FILES[name] for name in sorted(client.secrets)] + [PSEUDONYM_KEY_FILE]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise SecretsError(f"the job's workers read their secrets from files in {folder} ([secrets] dir), "
                           f"but {', '.join(missing)} is not there")
    return folder


def prepare_pseudonym_key(settings: Settings) -> PrivacyConfig:
    """The pseudonym key's file, for the job and for the backfill of its training sets alike: written from
    ``[privacy] pseudonym_key`` when given, else made at random once and kept (a restart keeps the pseudonyms);
    with ``[secrets] dir`` it must be there."""
    folder, key = settings.secrets_dir(), settings.privacy.pseudonym_key
    if settings.secrets.dir is None:
        if key is not None:
            write_secret_files(folder, {PSEUDONYM_KEY_FILE: key.get_secret_value()})
        elif not (folder / PSEUDONYM_KEY_FILE).is_file():
            write_secret_files(folder, {PSEUDONYM_KEY_FILE: secrets.token_hex(32)})
    elif not (folder / PSEUDONYM_KEY_FILE).is_file():
        raise SecretsError(f"the pseudonym key {PSEUDONYM_KEY_FILE} is not in {folder} ([secrets] dir)")
    return settings.privacy_config()


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
