"""A live champion/challenger experiment: which arm serves a shopper.

The champion is the model the job serves anyway (the registry's ``latest``, hot-swapped as usual); the challenger
is a pinned registry version under test. A share of the shoppers (``share``) is served by the challenger, chosen
by a keyed hash of the user id (the job's pseudonym): the same shopper always lands in the same arm for the same
experiment (sticky), and a new experiment id reshuffles everyone (the id is the hash's key). Anonymous requests
(an empty user id) are served by the champion: they cannot be kept in one arm.

Both arms share everything but the model: features, guardrails, the trust region of their own model, exploration,
the anchors of the hourly-change guardrail (a price either arm charged is the next hour's anchor for both). Every
priced event and recommendation carries ``experiment_id`` and ``arm`` (PricedEvent v4, Recommendation v2), and
``pricing experiments report`` compares the arms from the archive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

CHAMPION, CHALLENGER = "champion", "challenger"


class ExperimentConfig(BaseModel):
    """What a worker needs to split traffic (picklable; ``[experiment]`` in the settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    challenger_version: str = Field(pattern=r"^v\d{8}T\d{6}Z-[0-9a-f]{8}$")
    share: float = Field(default=0.1, gt=0.0, le=0.5)


def user_unit(user_ids: Iterable[str], experiment_id: str) -> np.ndarray:
    """Each user's point in [0, 1): the first 8 bytes of BLAKE2b(user id) keyed with the experiment id."""
    key = experiment_id.encode()
    out = [int.from_bytes(hashlib.blake2b(str(u).encode(), key=key, digest_size=8).digest(), "big") for u in user_ids]
    return np.asarray(out, dtype=np.uint64).astype(np.float64) / 2.0**64


def challenger_rows(user_ids: Iterable[str], experiment: ExperimentConfig) -> np.ndarray:
    """True where the challenger serves: a user whose point is below ``share``; never an anonymous request."""
    users = list(user_ids)
    known = np.asarray([bool(u) for u in users], dtype=bool)
    return known & (user_unit(users, experiment.id) < experiment.share)
