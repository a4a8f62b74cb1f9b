"""The scoring stage of the job: features in, checked decisions out, one model call per batch.

:class:`ScoringStage` is what the Flink pricing UDF runs per Python worker (the UDF in
``pricing_udfs.udfs`` is a thin adapter that calls :meth:`open` once and :meth:`price` per Arrow
batch). Per batch it:

1. gives every row its product's anchor (:class:`pricing_udfs.anchors.Anchors`, for the ``max_change``
   guardrail);
2. lets the :class:`ModelWatcher` swap in a newly promoted model that its background thread has
   already loaded and validated (the batch never waits for a load; ``pricing_udfs.model.serving``);
3. runs the policy (one ``model.score`` call over all rows and all K candidates), timing the call;
4. checks every decision (``check_decisions``): a bad one is re-priced by the fallback;
5. counts what happened (:attr:`counts`) for the Flink metrics (``trust_*``: rows the served
   model's trust region narrowed, by reason; ``pricing_udfs.policy.trust_region``).

Guarantee: given the same batch, the same model and the same anchors, the same prices.

The anchors survive a restart, ``kill -9`` included. A row's anchor is the price of the last priced
request (by request event time, then ``priced_time``, then ``request_id``) of its product in the most
recent earlier hour of event time that had one, over every price written *before its batch*: this
worker's earlier batches since it started, plus the priced events that :meth:`ScoringStage.open`
reads back from the priced-events topic, those written in the last ``anchor_lookback_ms`` (default
2 h + ``max_clock_skew_ms``; ``pricing_udfs.anchors.seed_from_topic``). Every price is inside
``anchor * (1 +/- max_change)`` unless a guardrail that precedes it (cost floor, minimum advertised
price, ceiling, fairness band) leaves no room.

* **exactly-once**: ``open()`` reads read_committed up to the high watermark taken at its start, so
  after the restored sink has committed or aborted the killed run's transactions: the anchors hold
  exactly the committed prices, what read_committed consumers see. So for every price a consumer
  sees in hour h, the anchor was the last committed price of the product's most recent earlier
  hour, when that price was written within the lookback and committed before the batch that priced
  it (a price of an earlier hour that arrives later, or in the same batch, is not its anchor).
* **at-least-once**: there are no transactions; every price ever written, a replayed request's
  second price included, is in the topic and in the anchors (ties go to the later ``priced_time``,
  where a consumer that dedupes on ``request_id`` keeps the first copy).
* A product whose most recent earlier priced hour was written before the lookback has no anchor
  after a restart (an uninterrupted worker would still hold it, up to ``anchor_history_hours``).
  With the defaults, a request of the restart's hour or later whose product was priced in the
  previous hour always finds that hour's anchor.
* Cost: ``open()`` reads every priced event written in the lookback, from every partition, on every
  worker (the rate of priced events times the lookback, about 1.2 million records at 150 requests/s),
  decoding only the fields up to ``priced_time``: 13 s for 1.17 million on the development machine
  (README, "Pricing: scoring, policy, guardrails"; ``benchmarks/anchor_seed.py``).
* With exactly-once and parallelism above 1, a worker that opens (at its first request) after another
  worker has written prices into a transaction still open cannot wait for that commit: it needs this
  worker's own checkpoint acknowledgement. After ``anchor_seed_grace_ms`` (10 s) such a partition counts
  as read up to that transaction (``seed_from_topic``): exact as long as the killed run's transactions
  were resolved within the grace, which the restored sinks do when their tasks start; logged and
  reported in ``seed_report.held``. Exactly-once output stalls for that grace while the worker waits.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pricing_udfs.anchors import DEFAULT_HISTORY_HOURS, Anchors, SeedReport, seed_from_topic
from pricing_udfs.experiment import CHALLENGER, CHAMPION, ExperimentConfig, challenger_rows
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.kafka_client import KafkaClient
from pricing_udfs.model.serving import Device, ModelWatcher
from pricing_udfs.policy import ModelPolicy, PolicySettings, check_decisions
from pricing_udfs.policy.guardrails import LIMITS, NO_PRICE_POINT
from pricing_udfs.policy.trust_region import COLD_PRODUCT, OUT_OF_RANGE, TRUST_CODES
from pricing_udfs.recommend.honoured import HonouredPrices, honour, record_offers
from pricing_udfs.recommend.tail import TopicTail

_HOUR_MS = 3_600_000
_CLOCK_SLACK_MS = 60_000  # offers are read from this much before the validity, for writers' clock skew


class ScoringConfig(BaseModel):
    """Everything a worker needs to build its scoring stage (picklable; shipped with the UDF)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry_dir: str | None
    model_version: str = "latest"
    watch_interval_s: float = 10.0
    device: Device = "auto"
    policy: PolicySettings = PolicySettings()
    default_price_minor: int = 1_999
    currency: str = "EUR"
    # TensorFlow's thread pools per worker ([models] intra_op_threads / inter_op_threads; 0: TF's default)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Rebuilding the anchors at start (pricing_udfs.anchors.seed_from_topic): how to connect (no secret in it: the
    # worker reads them from their files) and the priced-events topic; None: no rebuild.
    kafka: KafkaClient | None = None
    priced_topic: str | None = None
    anchor_lookback_ms: int = 2 * _HOUR_MS + 600_000  # [job] anchor_lookback_ms; 0: no rebuild
    anchor_seed_timeout_s: float = 120.0
    anchor_seed_grace_s: float | None = None  # exactly-once only (seed_from_topic); None: wait for the watermarks
    anchor_history_hours: int = DEFAULT_HISTORY_HOURS
    # Honoured prices (pricing_udfs.recommend.honoured): the recommendations topic this stage follows for the
    # offers it honours, and for how long an offer holds; None / 0: no offers honoured.
    recommendations_topic: str | None = None
    honour_validity_ms: int = 0
    # A live champion/challenger split (pricing_udfs.experiment); None: the champion serves everyone.
    experiment: ExperimentConfig | None = None


MAX_EVENTS = 100  # model events a worker keeps for its reports


class _Timed:
    """Wraps a model so the stage can time its ``score`` call."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0
        self.feature_spec_version = getattr(model, "feature_spec_version", None)
        if hasattr(model, "score_members"):  # an ensemble: Thompson sampling calls its members (model_policy)
            self.score_members = self._score_members

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.model.score(features, prices)
        finally:
            self.seconds += time.perf_counter() - t0

    def _score_members(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.model.score_members(features, prices)
        finally:
            self.seconds += time.perf_counter() - t0


class ScoringStage:
    """See the module docstring. ``watcher`` may be injected (tests); else it is built from ``config``."""

    def __init__(self, config: ScoringConfig, *, spec: FeatureSpec = FEATURE_SPEC, watcher: ModelWatcher | None = None,
                 challenger_watcher: ModelWatcher | None = None) -> None:  # fmt: skip
        self.config = config
        self.spec = spec
        self.watcher = watcher
        self.challenger_watcher = challenger_watcher  # the experiment's pinned challenger (config.experiment)
        self.anchors = Anchors(config.anchor_history_hours)
        self.seed_report: SeedReport | None = None  # what open() read to rebuild the anchors (None: no rebuild)
        self.counts: Counter[str] = Counter()
        self.last_batch_size = 0
        self.last_inference_ms = 0.0
        self.events: deque[str] = deque(maxlen=MAX_EVENTS)  # the newest model events (loads, swaps, rejections)
        self._recent: np.ndarray | None = None
        self._rejected_seen = 0
        self._last_priced_ms = 0
        self.offers: HonouredPrices | None = None  # open() follows the recommendations topic when configured
        self._offers_tail: TopicTail | None = None
        self._policy = ModelPolicy.create(None, "none", config.policy, default_price_minor=config.default_price_minor,
                                          currency=config.currency, spec=spec)  # fmt: skip
        self._challenger: ModelPolicy | None = None  # None until the challenger's model is loaded

    def open(self) -> None:
        """Rebuild the anchors from the priced-events topic (when the config names it; raises ``AnchorSeedError``
        if that fails, so that the worker never prices without them), then load the model synchronously and
        start the watcher's background loader. This runs before the worker's first batch is priced. The
        rebuild comes first so that its watermarks are taken as early as possible: before any other worker
        of the job can have finished its own ``open()`` and written prices (``seed_from_topic``, ``grace_s``)."""
        c = self.config
        if c.kafka is not None and c.priced_topic and c.anchor_lookback_ms > 0:
            self.seed_report = seed_from_topic(self.anchors, c.kafka.config(), c.priced_topic, lookback_ms=c.anchor_lookback_ms,
                                               timeout_s=c.anchor_seed_timeout_s, grace_s=c.anchor_seed_grace_s)  # fmt: skip
        if self.watcher is None:
            self.watcher = ModelWatcher(Path(c.registry_dir) if c.registry_dir else None, version=c.model_version,
                                        interval_s=c.watch_interval_s, device=c.device, spec=self.spec,
                                        intra_op_threads=c.intra_op_threads,
                                        inter_op_threads=c.inter_op_threads)  # fmt: skip
        experiment = c.experiment
        if experiment is not None and self.challenger_watcher is None:
            self.challenger_watcher = ModelWatcher(Path(c.registry_dir) if c.registry_dir else None,
                                                   version=experiment.challenger_version,
                                                   interval_s=c.watch_interval_s, device=c.device, spec=self.spec,
                                                   intra_op_threads=c.intra_op_threads,
                                                   inter_op_threads=c.inter_op_threads)  # fmt: skip
        self._refresh(force=True)  # the first load: synchronous, before any batch
        self.watcher.start()
        if self.challenger_watcher is not None:
            self.challenger_watcher.start()
        if c.kafka is not None and c.recommendations_topic and c.honour_validity_ms > 0:
            offers = self.offers = HonouredPrices(c.honour_validity_ms)
            now_ms = int(time.time() * 1000)
            self._offers_tail = TopicTail(c.kafka.config(), [(c.recommendations_topic, max(1, now_ms - c.honour_validity_ms
                                                                                  - _CLOCK_SLACK_MS))],
                                          lambda _, value: record_offers(offers, value), name="honoured-prices")  # fmt: skip
            self._offers_tail.catch_up(c.anchor_seed_timeout_s)
            self._offers_tail.start()

    def close(self) -> None:
        """Stop the watcher's background loader."""
        if self.watcher is not None:
            self.watcher.close()
        if self.challenger_watcher is not None:
            self.challenger_watcher.close()
        if self._offers_tail is not None:
            self._offers_tail.close()

    @property
    def model_version(self) -> str | None:
        return self.watcher.current.version if self.watcher and self.watcher.current else None

    def _refresh(self, *, force: bool = False) -> None:
        assert self.watcher is not None, "open() first"
        if force:  # open(): the synchronous first load
            event = self.watcher.check(self._recent, force=True)
            self.events.extend([event] if event else [])
        else:  # the hot path: never waits on a load
            self.events.extend(self.watcher.poll(self._recent))
        rejected = self.watcher.rejected_total
        self.counts["rejected_model_versions"] += rejected - self._rejected_seen
        self._rejected_seen = rejected
        current = self.watcher.current
        if current is not None and current.version != self._policy.model_version:
            self._policy = self._policy.with_model(current.model, current.version,
                                                   trust_region=getattr(current, "trust_region", None))  # fmt: skip
        chal = self.challenger_watcher
        if chal is not None:
            if force:
                event = chal.check(self._recent, force=True)
                self.events.extend([f"challenger: {event}"] if event else [])
            else:
                self.events.extend(f"challenger: {e}" for e in chal.poll(self._recent))
            loaded = chal.current
            if loaded is not None and (self._challenger is None or loaded.version != self._challenger.model_version):
                self._challenger = self._policy.with_model(loaded.model, loaded.version,
                                                           trust_region=getattr(loaded, "trust_region", None))  # fmt: skip

    def decide(self, batch: pd.DataFrame, *, priced_time_ms: int | None = None, record: bool = True) -> pd.DataFrame:
        """Checked decisions for ``batch`` (request columns plus one column per spec feature).

        ``priced_time_ms`` is the priced events' ``priced_time`` (the anchors order prices by it after the
        request's event time); None: the wall clock, strictly increasing per stage (offline replays). Without
        ``record`` the prices are not recorded in the anchors (a recommendation's offers are not sales). A
        row with an offer still valid (``offers``) gets the offer's price when it is inside the guardrails."""
        if priced_time_ms is None:
            priced_time_ms = max(int(time.time() * 1000), self._last_priced_ms + 1)
        self._last_priced_ms = priced_time_ms
        self._refresh()
        batch = batch.assign(anchor_price_minor=self.anchors.for_batch(batch["product_id"], batch["event_time"]))
        timed = _Timed(self._policy.model) if self._policy.model is not None else None
        policy = self._policy.with_model(timed, self._policy.model_version) if timed else self._policy
        experiment = self.config.experiment
        if experiment is None:
            decisions, replaced = self._checked(policy, batch)
        else:
            decisions, replaced = self._split(policy, batch, experiment, timed)
        if record:
            self.anchors.record(batch["product_id"], batch["event_time"], decisions["price_minor"].to_numpy(),
                                priced_time=priced_time_ms,
                                request_ids=batch["request_id"] if "request_id" in batch else None)  # fmt: skip
        self._count(decisions, replaced)
        self.last_batch_size = len(batch)
        self.last_inference_ms = timed.seconds * 1000 if timed else 0.0
        if len(batch):
            self._recent = batch[list(self.spec.names)].iloc[-32:].to_numpy(dtype=np.float64, copy=True)  # the canary's
        return decisions

    def arms(self, user_ids: list[str]) -> np.ndarray:
        """The arm that serves each user now (``config.experiment``): the challenger for its share of the users
        while its model is loaded, else the champion."""
        experiment = self.config.experiment
        if experiment is None or self._challenger is None:
            return np.full(len(user_ids), CHAMPION, dtype=object)
        return np.where(challenger_rows(user_ids, experiment), CHALLENGER, CHAMPION).astype(object)

    def _checked(self, policy: ModelPolicy, batch: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        decisions, replaced = check_decisions(policy, batch, policy.decide(batch))
        if self.offers is not None and len(batch):
            with self._offers_tail.lock if self._offers_tail is not None else contextlib.nullcontext():
                decisions = honour(self.offers, policy, batch, decisions)
        return decisions, replaced

    def _split(self, policy: ModelPolicy, batch: pd.DataFrame, experiment: ExperimentConfig,
               timed: _Timed | None) -> tuple[pd.DataFrame, int]:  # fmt: skip
        """Champion rows by ``policy``, the challenger's users by the challenger (while its model is not loaded, or
        was refused, the champion serves them and they are logged as champion), each row's arm in ``arm``."""
        chal_rows = self.arms(batch["user_id"].tolist()) == CHALLENGER
        self.counts["experiment_challenger_unavailable"] += 0 if self._challenger is not None else len(batch)
        if not chal_rows.any():
            decisions, replaced = self._checked(policy, batch)
        else:
            assert self._challenger is not None
            chal_timed = _Timed(self._challenger.model)
            parts, replaced = [], 0
            for rows, arm_policy in ((~chal_rows, policy), (chal_rows, self._challenger.with_model(
                    chal_timed, self._challenger.model_version))):  # fmt: skip
                if rows.any():
                    part, n = self._checked(arm_policy, batch[rows].reset_index(drop=True))
                    parts.append(part.set_index(np.flatnonzero(rows)))
                    replaced += n
            decisions = pd.concat(parts).sort_index().reset_index(drop=True)
            if timed is not None:
                timed.seconds += chal_timed.seconds
        self.counts["experiment_challenger"] += int(chal_rows.sum())
        return decisions.assign(experiment_id=experiment.id,
                                arm=np.where(chal_rows, CHALLENGER, CHAMPION).astype(object)), replaced  # fmt: skip

    def _count(self, decisions: pd.DataFrame, replaced: int) -> None:
        c = self.counts
        c["requests_priced"] += len(decisions)
        c["fallbacks"] += int(decisions["fallback_used"].sum())
        c["explored"] += int(decisions["explored"].sum())
        c["invalid_decisions"] += replaced
        for codes in decisions["reason_codes"]:
            if OUT_OF_RANGE in codes or COLD_PRODUCT in codes:
                c["trust_narrowed"] += 1  # the trust region narrowed its range (or priced it by the fallback)
            for code in codes:
                if code in TRUST_CODES:
                    c[f"trust_{code}"] += 1
                elif code in LIMITS or code == NO_PRICE_POINT:
                    c[f"guardrail_{code}"] += 1
                elif code in ("no_model", "model_error", "model_invalid_output", "no_unit_cost", "default_price"):
                    c[f"fallback_{code}"] += 1
