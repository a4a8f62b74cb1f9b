"""What the job hands each pricing worker (``jobs.pricing_job.scoring_config``): no services needed."""

from __future__ import annotations

from jobs.pricing_job import scoring_config
from pricing.config import load_settings


def test_the_workers_get_the_tensorflow_threads_and_what_the_anchor_rebuild_needs() -> None:
    settings = load_settings(
        kafka={"bootstrap_servers": "broker:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
               "sasl_username": "pricing", "sasl_password": "s3cret", "topics": {"priced": {"name": "priced-x"}}},
        models={"intra_op_threads": 2, "inter_op_threads": 3},
        job={"max_clock_skew_ms": 300_000, "anchor_seed_timeout_ms": 30_000, "anchor_history_hours": 4},
    )  # fmt: skip
    config = scoring_config(settings)
    assert (config.intra_op_threads, config.inter_op_threads) == (2, 3)
    assert config.kafka == settings.job_kafka_client() and config.priced_topic == "priced-x"
    assert config.kafka.secrets == {"sasl_password"} and config.kafka.sasl_username == "pricing"
    assert config.anchor_lookback_ms == 2 * 3_600_000 + 300_000  # the default: two hours plus the clock skew
    assert (config.anchor_seed_timeout_s, config.anchor_history_hours, config.anchor_seed_grace_s) == (30.0, 4, 10.0)
    assert "s3cret" not in repr(config) and "s3cret" not in config.model_dump_json()  # the worker reads a file
    assert scoring_config(load_settings(job={"anchor_lookback_ms": 0})).anchor_lookback_ms == 0  # no rebuild
    # the grace is for the job's own open transactions: at-least-once has none
    assert scoring_config(load_settings(job={"delivery_guarantee": "at-least-once"})).anchor_seed_grace_s is None
    assert scoring_config(load_settings(job={"anchor_seed_grace_ms": None})).anchor_seed_grace_s is None


def test_the_defaults_are_sized_for_one_slot() -> None:
    config = scoring_config(load_settings())
    assert (config.intra_op_threads, config.inter_op_threads) == (1, 1)
    assert config.anchor_lookback_ms == 2 * 3_600_000 + 600_000 and config.anchor_seed_timeout_s == 120.0
