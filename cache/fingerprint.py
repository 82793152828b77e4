"""Fingerprints: short, stable hashes of the settings a store or model was made with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def fingerprint(params: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of PARAMS, first 16 hex digits."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, first 16 hex digits (weights files can be large: streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human-readable 'key: found -> expected' lines for the settings that differ."""
    keys = sorted(set(expected) | set(found))
    return [
        f"{k}: {found.get(k)!r} (stored) vs {expected.get(k)!r} (asked)"
        for k in keys
        if json.dumps(expected.get(k), sort_keys=True, default=str)
        != json.dumps(found.get(k), sort_keys=True, default=str)
    ]
