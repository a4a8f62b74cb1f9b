"""Where a job without state starts reading (pricing.warm_start), for the start modes that need no broker,
and from a fake consumer for the committed-offset mode."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pricing.config import Settings
from pricing.warm_start import WarmStartError, plan_warm_start

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_780_000_000_000


def _settings(**job: Any) -> Settings:
    base = Settings()
    return base.model_copy(update={"job": base.job.model_copy(update=job)})


def test_by_default_behaviour_starts_a_day_back_and_market_at_its_earliest_record() -> None:
    warm = plan_warm_start(_settings(startup_mode="latest-offset"), now_ms=NOW)
    assert warm is not None
    assert (warm.requests_from_ms, warm.context_from_ms, warm.market_from_ms) == (NOW, NOW - DAY, 0)
    assert "market events from their earliest retained record" in warm.describe()
    limited = plan_warm_start(_settings(startup_mode="latest-offset", warm_start_market_ms=7 * DAY), now_ms=NOW)
    assert limited is not None and limited.market_from_ms == NOW - 7 * DAY


def test_a_timestamp_start_is_the_first_request_and_the_market_never_starts_after_the_behaviour() -> None:
    t = NOW - 5 * HOUR
    warm = plan_warm_start(_settings(startup_mode="timestamp", startup_timestamp_ms=t, warm_start_ms=3 * DAY,
                                     warm_start_market_ms=DAY), now_ms=NOW)  # fmt: skip
    assert warm is not None
    assert (warm.requests_from_ms, warm.context_from_ms, warm.market_from_ms) == (t, t - 3 * DAY, t - 3 * DAY)


def test_no_warm_start_when_it_is_off() -> None:
    assert plan_warm_start(_settings(startup_mode="latest-offset", warm_start_ms=0, warm_start_market_ms=0), now_ms=NOW) is None


class _Msg:
    def __init__(self, stamp: int) -> None:
        self._stamp = stamp

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, self._stamp)


class _Consumer:
    """Two partitions: p0 committed at 5 of [0, 10) with records stamped 1000 + offset; p1 fully read."""

    def __init__(self, conf: dict[str, Any]) -> None:
        assert conf["isolation.level"] == "read_committed" and conf["enable.auto.commit"] is False
        self.assigned: list[Any] = []

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None, 1: None})})

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        for tp in partitions:
            tp.offset = 5 if tp.partition == 0 else 10
        return partitions

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return (0, 10)

    def assign(self, tps: list[Any]) -> None:
        self.assigned = tps

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        return [_Msg(1000 + self.assigned[0].offset)]

    def close(self) -> None:
        pass


def test_group_offsets_start_at_the_first_uncommitted_request_and_skip_read_partitions() -> None:
    warm = plan_warm_start(_settings(startup_mode="group-offsets"), now_ms=NOW, consumer_factory=_Consumer)
    assert warm is not None and warm.requests_from_ms == 1005
    assert warm.context_from_ms == 0  # never before the epoch


def test_a_missing_requests_topic_is_a_clear_error() -> None:
    class NoTopic(_Consumer):
        def list_topics(self, topic: str, timeout: float) -> Any:
            return SimpleNamespace(topics={})

    with pytest.raises(WarmStartError, match="not found; create the topics first"):
        plan_warm_start(_settings(startup_mode="earliest-offset"), now_ms=NOW, consumer_factory=NoTopic)


def test_partition_leaders_still_being_elected_are_waited_for_and_other_errors_are_one_line() -> None:
    """Right after ``pricing topics create`` a new topic's leaders may not be elected yet: a transient error."""
    from confluent_kafka import KafkaError, KafkaException

    class NewTopic(_Consumer):
        failures = 0

        def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
            if NewTopic.failures < 3:
                NewTopic.failures += 1
                raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
            return super().get_watermark_offsets(tp, timeout)

    warm = plan_warm_start(_settings(startup_mode="group-offsets"), now_ms=NOW, consumer_factory=NewTopic)
    assert warm is not None and warm.requests_from_ms == 1005 and NewTopic.failures == 3

    class Denied(_Consumer):
        def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    with pytest.raises(WarmStartError, match="cannot read") as caught:
        plan_warm_start(_settings(startup_mode="group-offsets"), now_ms=NOW, consumer_factory=Denied)
    assert "\n" not in str(caught.value)
