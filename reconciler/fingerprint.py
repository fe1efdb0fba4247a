"""Canonical JSON and the hashes built on it (pure).

A fingerprint is ``sha256:`` + the hex digest of the canonical JSON of a value:
keys sorted, no whitespace, UTF-8. Two configurations with the same fingerprint
are the same configuration; that is the whole test the planner uses to decide
whether a replica must be replaced.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

PREFIX = "sha256:"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(value: Any) -> str:
    """``sha256:<hex>`` of ``value``'s canonical JSON."""
    return PREFIX + hashlib.sha256(canonical_json(value).encode()).hexdigest()


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of a secret value under the host's secret key.

    A plain hash of a short password can be reversed by guessing; a keyed one
    cannot without the key, which never leaves the state directory. So the hash
    may sit in labels and plan files, and a changed secret still changes it.
    """
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def short(digest: str, length: int = 12) -> str:
    """``sha256:0123456789ab…`` → ``0123456789ab`` for people to read."""
    return digest.split(":", 1)[-1][:length]
