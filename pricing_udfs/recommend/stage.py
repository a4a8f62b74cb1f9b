"""The recommendation path's two stages in the job, between thin Flink adapters (``pricing_udfs.udfs``):

1. :class:`CandidateStage` (beside the recommend-request decoder): a :class:`CandidateIndex` that each
   Python worker keeps from the behaviour and catalogue topics (``pricing_udfs.recommend.tail``), and
   the candidates of each decoded request. The job then fans each request out into one row per
   candidate, which the feature stage (JVM windows, the one feature spec) features like a price request.
2. :class:`RecommendStage` (after the JVM gathers each request's featured candidates into its slate):
   prices every candidate of every slate in the Arrow batch with the pricing path's own
   :class:`ScoringStage` (one model call, the same policy, guardrails, trust region and anchors), ranks
   them (``pricing_udfs.recommend.ranking``) and returns ``Recommendation`` records.

A recommendation's prices are offers, not sales: the stage records none of them in its anchors, and
its anchors are those of the priced-events topic when the worker opened. The pricing stage honours an
offer when the shopper then asks for the product (``pricing_udfs.recommend.honoured``), re-checked
against its own guardrails then.

Guarantee: with the model missing or failing, the pricing fallback prices every candidate and the
ranking falls back to candidate evidence (popularity, co-occurrence) at the reference price
(``fallback_used``). The candidate index is rebuilt from the topics after a restart (the behaviour of
the last ``lookback_ms`` and the whole compacted catalogue), so a replayed request may get other
candidates than its first answer if behaviour arrived in between (consumers dedupe on request_id).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pricing_udfs import serde
from pricing_udfs.avro_columns import encode_records
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.kafka_client import KafkaClient
from pricing_udfs.privacy import PrivacyConfig
from pricing_udfs.recommend.candidates import Candidate, CandidateIndex, CandidateSettings
from pricing_udfs.recommend.ranking import RankingSettings, candidate_rows, rank
from pricing_udfs.recommend.tail import TopicTail
from pricing_udfs.scoring import ScoringConfig, ScoringStage
from pricing_udfs.serde import Contract

log = logging.getLogger(__name__)
REASON_SEPARATOR = ","


class CandidateConfig(BaseModel):
    """What each worker needs to keep its candidate index (picklable; shipped with the decoder UDF)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: CandidateSettings
    kafka: KafkaClient | None = None  # None: no topics followed (tests feed it)
    behaviour_topic: str = "behaviour-events"
    catalogue_topic: str = "catalogue"
    lookback_ms: int = Field(default=24 * 3_600_000, ge=0)
    catch_up_timeout_s: float = Field(default=60.0, gt=0)
    # Pseudonymous users (pricing_udfs.privacy): the recommend decoder and the index see pseudonyms only.
    privacy: PrivacyConfig | None = None


class CandidateStage:
    def __init__(self, config: CandidateConfig) -> None:
        self.config = config
        self.index = CandidateIndex(config.settings)
        self.tail: TopicTail | None = None
        self.skipped = 0
        self._pseudonymise = config.privacy.pseudonymiser() if config.privacy is not None else None

    def open(self, *, now_ms: int | None = None) -> None:
        """Read the catalogue and the last ``lookback_ms`` of behaviour, then follow both (no topics: nothing)."""
        c = self.config
        if c.kafka is None:
            return
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self.tail = TopicTail(c.kafka.config(), [(c.catalogue_topic, 0), (c.behaviour_topic, max(1, now_ms - c.lookback_ms))],
                              self.handle, name="candidate-index")  # fmt: skip
        self.tail.catch_up(c.catch_up_timeout_s)
        self.tail.start()

    def close(self) -> None:
        if self.tail is not None:
            self.tail.close()

    def handle(self, topic: str, value: bytes | None) -> None:
        """One record of a followed topic (called under the tail's lock)."""
        if topic == self.config.catalogue_topic:
            got = serde.decode(Contract.CATALOGUE_ENTRY, value)
            if got.ok:
                r = got.record
                self.index.catalogue(r["product_id"], r["category"], active=bool(r["active"]))
                return
        else:
            got = serde.decode(Contract.BEHAVIOUR_EVENT, value)
            if got.ok:
                r = got.record
                user = self._pseudonymise(r["user_id"]) if self._pseudonymise is not None else r["user_id"]
                self.index.observe(user, r["product_id"], r["type"], int(r["event_time"]))
                return
        self.skipped += 1  # bad records are the decoders' business (dead letters); the index just skips them

    def candidates(self, requests: pd.DataFrame) -> list[list[Candidate]]:
        """The candidates of each decoded request (``ok`` rows; others get none)."""
        out: list[list[Candidate]] = []
        with self.tail.lock if self.tail is not None else contextlib.nullcontext():
            for r in requests.itertuples(index=False):
                if not r.ok:
                    out.append([])
                    continue
                explicit = list(r.candidate_product_ids) if r.candidate_product_ids is not None else []
                out.append(self.index.candidates(r.user_id or "", int(r.event_time),
                                                 context_product_id=r.context_product_id,
                                                 context_category=r.context_category, explicit=explicit))  # fmt: skip
        return out


class RecommendConfig(BaseModel):
    """What each worker needs to build its recommend stage (picklable; shipped with the ranking UDF)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scoring: ScoringConfig
    ranking: RankingSettings = RankingSettings()


class RecommendStage:
    """See the module docstring. ``scoring`` may be injected (tests)."""

    def __init__(self, config: RecommendConfig, *, spec: FeatureSpec = FEATURE_SPEC, scoring: ScoringStage | None = None) -> None:
        self.config = config
        self.spec = spec
        self.scoring = scoring or ScoringStage(config.scoring, spec=spec)

    def open(self) -> None:
        self.scoring.open()

    def close(self) -> None:
        self.scoring.close()

    def recommend(self, requests: pd.DataFrame, slates: Sequence[pd.DataFrame], *, answered_time_ms: int) -> list[dict[str, Any]]:
        """``requests``: request_id, user_id, channel, event_time, k (one row per slate); ``slates[i]``: its
        candidates (product_id, list_currency, candidate_score, candidate_reasons, one column per feature).
        One ``decide`` (one model call) for every candidate of every slate."""
        reqs = requests.to_dict("records")
        found = [[Candidate(str(p), float(s), tuple(r)) for p, s, r in
                  zip(sl["product_id"], sl["candidate_score"], sl["candidate_reasons"])] for sl in slates]  # fmt: skip
        rows = candidate_rows(reqs, found)
        if len(rows):
            extra = pd.concat([sl[["list_currency", *self.spec.names]] for sl in slates], ignore_index=True)
            batch = pd.concat([rows.reset_index(drop=True), extra], axis=1)
            decisions = self.scoring.decide(batch, record=False)
        else:
            batch = rows
            decisions = pd.DataFrame(columns=["fallback_used", "model_version"])
        records = rank(reqs, batch, decisions, self.config.ranking, answered_time_ms=answered_time_ms,
                       feature_spec_version=self.spec.version)
        experiment = self.scoring.config.experiment
        if experiment is not None:  # the arm that priced the slate (the same user's arm as in decide)
            for record, arm in zip(records, self.scoring.arms([r["user_id"] for r in records])):
                record["experiment_id"], record["arm"] = experiment.id, arm
        return records


def slate_frame(product_ids: Any, currencies: Any, scores: Any, reasons: Any, features: Any, *, spec: FeatureSpec) -> pd.DataFrame:
    """One gathered slate (``pricing.recommend.CollectSlate``'s arrays) as the frame :meth:`RecommendStage.recommend` reads."""
    products = [str(p) for p in (product_ids if product_ids is not None else [])]
    n, f = len(products), len(spec.names)
    flat = np.asarray(features if features is not None else [], dtype=np.float64)
    if flat.size != n * f:
        raise ValueError(f"a slate of {n} candidates came with {flat.size} feature values, not {n} x {f}")
    frame = pd.DataFrame(flat.reshape(n, f), columns=list(spec.names))
    frame.insert(0, "product_id", products)
    frame.insert(1, "list_currency", list(currencies) if n else [])
    frame.insert(2, "candidate_score", np.asarray(scores if n else [], dtype=np.float64))
    frame.insert(3, "candidate_reasons", [tuple(str(r).split(REASON_SEPARATOR)) if r else () for r in (reasons if n else [])])
    return frame


def encode_recommendations(records: Sequence[dict[str, Any]]) -> pd.Series:
    """Framed ``Recommendation`` bytes, one per record (column by column: the bytes of ``serde.encode``)."""
    return pd.Series(encode_records(Contract.RECOMMENDATION, records), dtype=object)
