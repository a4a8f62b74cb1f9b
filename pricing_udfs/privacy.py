"""Pseudonymous users: a shopper's id is replaced at decode by a keyed hash, so nothing downstream holds it.

``pseudonym(user_id) = "<key id>:" + base64url(HMAC-SHA-256(key, user_id))[:22]`` (128 bits). The decoders of
the job apply it to every input that names a user (price requests, behaviour events, recommend requests)
before anything else sees the row: keyed state, features, priced events, recommendations, the candidate index
and the training sets (the backfill applies the same function to the raw history) hold pseudonyms only. An
anonymous request (empty ``user_id``) stays anonymous. The storefront matches answers by request id.

**The key** is a secret file (``pseudonym.key`` in the secrets folder, ``[secrets] dir``), read by each worker
when it opens, never shipped in the job. Without a key of its own the job makes a random one on first start
(``pricing.config.prepare_job_secrets``) and keeps it there, so a restart keeps the pseudonyms.

**Rotation:** a new key under a new ``[privacy] pseudonym_key_id``. Every pseudonym changes, and the key id in it
says which key made it. Per-user windows (views, carts, purchases of the last 24 h) start empty under the new
pseudonyms and are full again after 24 h; product windows are unaffected. Training sets mixing both keys see
one shopper as two users across the change. Keep the old key only as long as data made with it is kept.

**Dead letters** (``[privacy] dead_letter_payload``): ``raw`` keeps up to ``dead_letter_max_raw_bytes`` of a
bad record, which may hold a user id; ``digest`` keeps only its size and SHA-256, and the decoder then replaces
every record's bytes by that digest at once, so no raw bytes are held in state for duplicate dead letters either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pricing_udfs.serde import Contract

PSEUDONYM_KEY_FILE = "pseudonym.key"
# The field that names a shopper in each input contract.
USER_FIELDS = {Contract.PRICE_REQUEST: "user_id", Contract.BEHAVIOUR_EVENT: "user_id",
               Contract.RECOMMEND_REQUEST: "user_id"}  # fmt: skip
MIN_KEY_BYTES = 32
_DIGEST = b"sha256+size:"  # marks a record's bytes replaced by their digest (digest_token)
_CACHE = 100_000  # pseudonyms kept per worker (an LRU): shoppers come back within a session


class PrivacyError(RuntimeError):
    """The pseudonym key cannot be read or is too short; the message names the file, never the key."""


class PrivacyConfig(BaseModel):
    """What a worker needs to pseudonymise: where the key file is and its id (picklable, no secret in it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secrets_dir: str
    key_id: str = Field(pattern=r"^[a-z0-9]{1,8}$")
    dead_letter_payload: Literal["raw", "digest"] = "raw"

    def pseudonymiser(self) -> "Pseudonymiser":
        return Pseudonymiser(read_key(Path(self.secrets_dir) / PSEUDONYM_KEY_FILE), self.key_id)


def read_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise PrivacyError(f"cannot read the pseudonym key {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise PrivacyError(f"the pseudonym key {path} has {len(key)} bytes, fewer than {MIN_KEY_BYTES}")
    return key


class Pseudonymiser:
    """``pseudonymiser(user_id)``; an LRU cache of the last ``_CACHE`` ids keeps repeat shoppers cheap."""

    def __init__(self, key: bytes, key_id: str) -> None:
        self._key = key
        self.key_id = key_id
        self._prefix = f"{key_id}:"
        self._cache: OrderedDict[str, str] = OrderedDict()

    def __call__(self, user_id: str | None) -> str | None:
        if not user_id:
            return user_id  # anonymous (empty) or missing stays so
        hit = self._cache.get(user_id)
        if hit is not None:
            self._cache.move_to_end(user_id)
            return hit
        mac = hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256).digest()
        out = self._prefix + base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")
        self._cache[user_id] = out
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return out


def digest_token(raw: bytes | None) -> bytes:
    """A record's bytes replaced by what a dead letter keeps in ``digest`` mode: SHA-256 and size."""
    value = bytes(raw) if raw is not None else b""
    return _DIGEST + hashlib.sha256(value).digest() + struct.pack(">Q", len(value))


def read_digest_token(token: bytes) -> tuple[str, int] | None:
    """(sha256 hex, size) of a :func:`digest_token`, else None (the bytes are a record's own)."""
    n = len(_DIGEST)
    if len(token) != n + 40 or not token.startswith(_DIGEST):
        return None
    return token[n:n + 32].hex(), struct.unpack(">Q", token[n + 32:])[0]
