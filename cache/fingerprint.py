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
    """'setting: found (stored) vs expected (asked)' for every setting that differs, nested
    settings as dotted names."""
    return compare_settings(found, expected, "stored", "asked")


def compare_settings(
    before: dict[str, Any], after: dict[str, Any], before_name: str, after_name: str
) -> list[str]:
    """'setting: value (BEFORE_NAME) vs value (AFTER_NAME)' for every setting that differs
    between two settings dicts, nested sections as dotted names (finetune.iterations), so a
    mismatch names each setting and both values rather than two whole sections."""
    flat_before, flat_after = flatten_settings(before), flatten_settings(after)
    return [
        f"{key}: {flat_before.get(key)!r} ({before_name}) vs {flat_after.get(key)!r} ({after_name})"
        for key in sorted(set(flat_before) | set(flat_after))
        if _canonical(flat_before.get(key)) != _canonical(flat_after.get(key))
    ]


def flatten_settings(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted keys; tuples as lists (as JSON stores them)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _canonical(value: Any) -> str:
    # Compared as the fingerprint sees them: a tuple and a list of the same items are equal.
    return json.dumps(value, sort_keys=True, default=str)
