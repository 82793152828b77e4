"""Shared helpers of the tests in this folder."""

from __future__ import annotations

SCENE = [(20, 15, 79, 74), (100, 60, 149, 109)]
