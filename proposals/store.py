"""The proposals store of one split: WORK/proposals/<split>/, a sharded HDF5 store.

Per image: dataset ``boxes``, int16 [N, 4] (int32 for images over 32,767 px a side), x1 y1 x2 y2
in 0-based pixels of the upright (EXIF-applied) image, best first; image attributes ``width``,
``height`` (of the decoded image; 0 when unreadable), ``bad`` (unreadable image, zero boxes) and
``error`` (why, for bad images). The store's params record the method and every setting that
decides the boxes (proposals/methods.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sppdet.cache.shards import ShardedStore

if TYPE_CHECKING:  # workdir imports torch; worker processes never need it
    from sppdet.cache.workdir import WorkDir

KIND = "proposals"
MADE_BY = "sppdet propose"
BOXES = "boxes"


class ProposalStore:
    """Read access to a complete proposals store."""

    def __init__(self, store: ShardedStore) -> None:
        self.store = store

    @classmethod
    def open(cls, root: str | Path) -> ProposalStore:
        return cls(ShardedStore.open(root, KIND, made_by=MADE_BY))

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def fingerprint(self) -> str:
        return self.store.meta.fingerprint

    @property
    def params(self) -> dict[str, Any]:
        return self.store.meta.params

    @property
    def image_ids(self) -> list[str]:
        return self.store.meta.image_ids

    def boxes(self, image_id: str) -> np.ndarray:
        """float32 [N, 4] x1 y1 x2 y2 (0-based pixels), best first."""
        return self.store.get(image_id, BOXES).astype(np.float32).reshape(-1, 4)

    def count(self, image_id: str) -> int:
        """Number of boxes of IMAGE_ID, read from the dataset's shape only."""
        return int(self.store.group(image_id)[BOXES].shape[0])

    def attrs(self, image_id: str) -> dict[str, Any]:
        return self.store.image_attrs(image_id)

    def bad_images(self) -> list[tuple[str, str]]:
        """(image id, reason) of every image recorded as unreadable."""
        out = []
        for image_id in self.image_ids:
            attrs = self.attrs(image_id)
            if attrs.get("bad", False):
                out.append((image_id, str(attrs.get("error", "unreadable"))))
        return out

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ProposalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_proposals(work: WorkDir, split: str) -> ProposalStore:
    """The complete proposals store of SPLIT in WORK (a clear error names `sppdet propose`)."""
    return ProposalStore.open(work.proposals(split))
