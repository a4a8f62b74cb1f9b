"""The job's recommendation stage: recommend-requests in, recommendations out, through the pricing path.

    recommend-requests ─ decode + candidates (Arrow batch; each worker's candidate index follows the
          │              behaviour and catalogue topics: pricing_udfs.recommend.stage.CandidateStage)
          ├─ no candidates ──────────────────────────────────────────────────────────┐
          └─ one row per candidate (UNNEST, JVM)                                      │
               └─ feature stage (jobs.features: featured like a price request)        │
                    └─ gather per request (pricing.recommend.CollectSlate, JVM)        │
                         └─ price every candidate (the pricing path's ScoringStage, one model call per
                            Arrow batch) + rank + encode (pricing_udfs.recommend.stage.RecommendStage) ─> recommendations
    bad recommend requests ─> dead-letters (like every input)

A recommendation is many pricing decisions ranked: the same features, model, policy, guardrails and
trust region as a price request; the prices are offers that the pricing path honours
(``pricing_udfs.recommend.honoured``). Guarantees are the job's: with exactly-once, each good recommend
request appears once in recommendations and each bad one once in dead-letters, to read_committed consumers;
with at-least-once a replayed request may be answered twice (consumers dedupe on request_id). A request id
repeated while its first copy is still being gathered is answered once per copy.
"""

from __future__ import annotations

from pyflink.table import TableEnvironment

from pricing.config import Settings
from pricing_udfs import udfs
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.recommend.stage import CandidateConfig, RecommendConfig
from pricing_udfs.scoring import ScoringConfig

COLLECT_SLATE = "pricing.recommend.CollectSlate"  # deploy/jvm


def candidate_config(settings: Settings) -> CandidateConfig:
    r, topics = settings.recommend, settings.kafka.topics
    return CandidateConfig(settings=r.candidate_settings(), kafka=settings.job_kafka_client(),
                           behaviour_topic=topics.behaviour.name, catalogue_topic=topics.catalogue.name,
                           lookback_ms=r.lookback_ms, catch_up_timeout_s=r.catch_up_timeout_ms / 1000,
                           privacy=settings.privacy_config())  # fmt: skip


def recommend_config(settings: Settings, scoring: ScoringConfig) -> RecommendConfig:
    """The recommend stage prices with the pricing path's scoring config, honouring no offers of its own."""
    return RecommendConfig(scoring=scoring.model_copy(update={"recommendations_topic": None, "honour_validity_ms": 0}),
                           ranking=settings.recommend.ranking)  # fmt: skip


def declare_candidate_rows(t_env: TableEnvironment, *, recommend: str) -> str:
    """The view of one row per (good recommend request, candidate), with the ``jobs.features.SLATE_COLUMNS``."""
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW recommend_candidates AS
SELECT r.ts, r.request_id, r.user_id, r.channel, r.event_time, c.product_id,
  CAST(CARDINALITY(r.candidate_ids) AS INT) AS slate_size, CAST(c.idx AS INT) AS slate_index, r.k AS slate_k,
  r.candidate_scores[c.idx] AS candidate_score, r.candidate_reasons[c.idx] AS candidate_reasons
FROM {recommend} AS r CROSS JOIN UNNEST(r.candidate_ids) WITH ORDINALITY AS c(product_id, idx)
WHERE r.ok
""")
    return "recommend_candidates"


def recommendations_sql(t_env: TableEnvironment, settings: Settings, *, recommend: str, featured: str,
                        scoring: ScoringConfig, spec: FeatureSpec = FEATURE_SPEC, sink: str) -> str:  # fmt: skip
    """The INSERT that gathers the featured candidates (``featured`` rows with ``slate_size``) of each request,
    prices, ranks and encodes them into ``sink``; requests without candidates are answered with none."""
    t_env.execute_sql(f"CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS collect_slate AS '{COLLECT_SLATE}' LANGUAGE JAVA")
    t_env.create_temporary_system_function(
        "recommend_and_encode", udfs.recommend_and_encode_udf(recommend_config(settings, scoring), spec=spec))
    features = f"ARRAY[{', '.join(spec.names)}]"
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW recommend_slates AS
SELECT request_id, user_id, channel, event_time, slate_k AS k, slate.product_ids, slate.currencies, slate.scores,
  slate.reasons, slate.features
FROM (
  SELECT request_id, user_id, channel, event_time, slate_k,
    collect_slate(slate_size, slate_index, product_id, list_currency, candidate_score, candidate_reasons, {features})
      OVER (PARTITION BY request_id ORDER BY pt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS slate
  FROM (SELECT *, PROCTIME() AS pt FROM {featured} WHERE slate_size IS NOT NULL)
) WHERE slate IS NOT NULL
UNION ALL
SELECT request_id, user_id, channel, event_time, k, candidate_ids, candidate_ids, candidate_scores,
  candidate_reasons, candidate_scores  -- (all empty: arrays of the right types)
FROM {recommend} WHERE ok AND CARDINALITY(candidate_ids) = 0
""")
    return f"""
INSERT INTO {sink}
SELECT CAST(request_id AS BYTES),
  recommend_and_encode(request_id, user_id, channel, event_time, k, product_ids, currencies, scores, reasons, features)
FROM recommend_slates
"""
