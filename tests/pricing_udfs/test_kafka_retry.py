from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from pricing_udfs.kafka_retry import retried


class _Flaky:
    def __init__(self, code: int, failures: int) -> None:
        self.code, self.failures, self.calls = code, failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code))
        return "ok"


@pytest.mark.parametrize("code", [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                                  KafkaError.COORDINATOR_NOT_AVAILABLE])  # fmt: skip
def test_transient_errors_are_retried_until_the_call_succeeds(code: int) -> None:
    call = _Flaky(code, failures=3)
    assert retried(call, timeout_s=5, pause_s=0.01) == "ok" and call.calls == 4


def test_other_errors_and_transient_ones_that_outlast_the_timeout_are_raised() -> None:
    denied = _Flaky(KafkaError.TOPIC_AUTHORIZATION_FAILED, failures=1)
    with pytest.raises(KafkaException):
        retried(denied, timeout_s=5, pause_s=0.01)
    assert denied.calls == 1
    stuck = _Flaky(KafkaError.NOT_LEADER_FOR_PARTITION, failures=10**6)
    with pytest.raises(KafkaException):
        retried(stuck, timeout_s=0.1, pause_s=0.02)
    assert 2 <= stuck.calls <= 10
