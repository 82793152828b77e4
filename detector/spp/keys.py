"""Ordered integer keys of floats, and the memory helpers of the window pooler.

The pooler takes maxima on integers: a float map viewed as integers of its width, with the
magnitude bits of negative values inverted (``to_ordered_``), sorts as the floats do, and every
NaN becomes the positive NaN, which sorts above +inf, so a bin holding a NaN pools to NaN as
``torch.max`` does. ``ordered_limits`` gives the compiled kernel the same two constants.

Memory: ``advise_huge_pages`` asks Linux for 2 MiB pages behind a large CPU buffer, and
``buffer_shared`` tells whether anything else references a buffer, so that a result is reused only
once its caller has dropped it.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Callable

import torch

# Integer views whose order is the order of the floats they hold (see to_ordered_).
ORDERED_INT = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def flip_negative_(keys: torch.Tensor) -> None:
    """In place, on the bits of floats viewed as integers: invert the magnitude bits of negative
    numbers. Integer order then is float order (-0 just below +0), and the map is its own
    inverse. The sign bit is kept, so the same call maps pooled keys back to float bits."""
    bits = keys.element_size() * 8
    keys.bitwise_xor_((keys >> (bits - 1)) & ((1 << (bits - 1)) - 1))


def ordered_limits(dtype: torch.dtype) -> tuple[int, int]:
    """(lowest, nan): the ordered key of -inf, and the key every NaN becomes (the positive NaN,
    which sorts above +inf), for floats of DTYPE."""
    key = ORDERED_INT[dtype]
    lowest = torch.tensor(-math.inf, dtype=dtype).view(key).reshape(1).clone()
    flip_negative_(lowest)
    nan = torch.tensor(math.nan, dtype=dtype).abs().view(key).item()
    return int(lowest.item()), int(nan)


def to_ordered_(keys: torch.Tensor, dtype: torch.dtype) -> None:
    """Float bits of DTYPE (viewed as integers) -> integers of the same order, in place.

    After the flip, NaNs with the sign bit set would sort below -inf; they become the positive
    NaN, which sorts above +inf, so that a bin holding a NaN pools to NaN as torch.max does.
    """
    flip_negative_(keys)
    lowest, nan = ordered_limits(dtype)
    keys.masked_fill_(keys < lowest, nan)


_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux


_HUGE_PAGE = 2 << 20


_madvise: Callable[[int, int, int], int] | None = None


def advise_huge_pages(tensor: torch.Tensor) -> None:
    """Ask Linux to back a large CPU tensor with 2 MiB pages before it is first written.

    Filling a fresh 100 MB result touches 25,000 4 KiB pages, and their page faults cost about
    as much as the pooling itself; with 2 MiB pages it is 50 faults. This is advice only
    (madvise MADV_HUGEPAGE on the whole 2 MiB pages inside the tensor): values are unchanged,
    and where it is unavailable (other systems, transparent huge pages off) nothing happens.
    """
    global _madvise
    if tensor.device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    size = tensor.numel() * tensor.element_size()
    first = -(-tensor.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
    last = (tensor.data_ptr() + size) // _HUGE_PAGE * _HUGE_PAGE
    if not tensor.is_contiguous() or last <= first:
        return
    if _madvise is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            _madvise = libc.madvise
        except (OSError, AttributeError):
            _madvise = lambda *_: -1  # noqa: E731  (no libc madvise: never ask again)
    _madvise(first, last - first, _MADV_HUGEPAGE)


# torch offers no public way to ask whether other tensors share a storage; without this
# private one, results are never reused (see WindowPooler.new_result).
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _references(tensor: torch.Tensor) -> tuple[int, int]:
    """(tensors holding TENSOR's storage, Python references to its storage object)."""
    storage = tensor.untyped_storage()  # one object per storage: held elsewhere, it counts
    return int(_storage_use_count(storage._cdata)), sys.getrefcount(storage)


_PROBE = torch.empty(1)


_UNSHARED = _references(_PROBE) if _storage_use_count is not None else None


def buffer_shared(buffer: torch.Tensor) -> bool:
    """Whether anything besides BUFFER itself references its memory (another tensor or view,
    a numpy array, a storage object, ...). True when that cannot be known."""
    return _UNSHARED is None or _references(buffer) != _UNSHARED
