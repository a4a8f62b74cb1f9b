"""The KRaft cluster id handed to ``kafka-storage format`` (no broker needed)."""

import base64

from pricing.broker import _cluster_id


def test_cluster_ids_never_start_with_a_dash() -> None:
    """An id starting with '-' reads as an option to kafka-storage; 1 in 64 random ids did, failing CI at random."""
    ids = [_cluster_id() for _ in range(5_000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)  # a UUID, as Kafka expects
