"""Pyramid bins: how a window's cells split into the bins of each level, and the pooled layout.

* A pooled window is ``[C * sum(n*n)]`` long: pyramid levels in the given order; inside a level
  channel-major, index ``c*n*n + y*n + x`` (SPEC.md).
* Bin i of a level with n bins over a window h cells tall covers rows
  ``[floor(i*h/n), ceil((i+1)*h/n))`` from the window's first row (paper, Appendix A); columns
  likewise. Bins are never empty and may overlap.

The window pooler's plan is made here too: which coarser levels are reduced from a finer one
(``level_plan``), the sparse-table level a bin is looked up at (``table_level``) and the order in
which a map's sparse tables are built (``table_order``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

DEFAULT_PYRAMID = (1, 2, 3, 6)


def pyramid_dim(pyramid: Sequence[int], channels: int) -> int:
    """Length of one pooled vector: C * sum(n^2)."""
    return channels * sum(n * n for n in pyramid)


def check_pyramid(pyramid: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(int(n) for n in pyramid)
    if not levels or min(levels) < 1 or len(set(levels)) != len(levels):
        raise ValueError(f"a pyramid is distinct positive level sizes, got {pyramid}")
    return levels


def level_bins(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin starts and ends (exclusive) [N, n] of windows lo..hi (inclusive cells) split in n."""
    length = (hi - lo + 1)[:, None]
    i = torch.arange(n, dtype=torch.int64, device=lo.device)[None]
    start = lo[:, None] + (i * length) // n
    end = lo[:, None] + ((i + 1) * length + n - 1) // n
    return start, end


def _floor_log2(length: torch.Tensor) -> torch.Tensor:
    # frexp: x = m * 2**e with m in [0.5, 1), so floor(log2 x) = e - 1, exactly for integers.
    return torch.frexp(length.to(torch.float64)).exponent.to(torch.int64) - 1


def table_level(length: torch.Tensor) -> torch.Tensor:
    """Sparse-table level k of runs of LENGTH >= 1 cells: two lookups of 2^k cells, one at each
    end of the run, cover it exactly when 2^k <= length <= 2^(k+1). k = floor(log2(length - 1))
    (0 for a single cell) is the smallest such k: a run of 4 takes two 2-cell lookups rather
    than one 4-cell lookup, so fewer tables need building."""
    return _floor_log2((length - 1).clamp_min(1))


def level_plan(levels: tuple[int, ...]) -> dict[int, int | None]:
    """For each level, the finer level it is derived from (n divides m), or None to compute it.

    Level n's bin j is the union of level m's bins j*r .. j*r + r - 1 when m = r*n, exactly
    (consecutive bins touch or overlap), so its max is the max of those bins' maxes.
    """
    plan: dict[int, int | None] = {}
    for n in sorted(levels, reverse=True):
        sources = [m for m in plan if m % n == 0]
        plan[n] = min(sources) if sources else None
    return plan


Pair = tuple[int, int]


def table_order(needed: Iterable[Pair]) -> list[tuple[Pair, Pair | None]]:
    """The sparse tables to build for one map, as (table, source) in build order.

    Table (a, b) holds maxima over 2^a x 2^b cells; it is one elementwise max of two shifted
    copies of table (a-1, b) or (a, b-1). (0, 0) is the map itself (source None). Each needed
    table is reached from the nearest one already built, so only tables on those paths are
    built, not the full grid up to the largest a and b.
    """
    order: list[tuple[Pair, Pair | None]] = [((0, 0), None)]
    built = {(0, 0)}
    for a, b in sorted(needed, key=lambda p: (p[0] + p[1], p)):
        below = [q for q in built if q[0] <= a and q[1] <= b]
        qa, qb = min(below, key=lambda q: (a - q[0] + b - q[1], q))
        while (qa, qb) != (a, b):
            step = (qa + 1, qb) if qa < a else (qa, qb + 1)
            if step not in built:
                order.append((step, (qa, qb)))
                built.add(step)
            qa, qb = step
    return order
