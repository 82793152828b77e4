"""``--fc-rank``: a work folder's fc6 and fc7 replaced by rank-r layers, computed once and kept.

``compressed_head`` fits them (``heads.lowrank``: to the layers' responses by default, or the
weights' truncated SVD) and keeps them in WORK/models/fc-rank-R6-R7[-weights].pt, keyed by what
the head was made from and, for the responses' fit, by the sample it was fitted on: up to
``FC_RANK_FIT_WINDOWS`` proposals drawn (seeded) evenly from the images of the split the SVMs
were trained on, pooled at their best scale as detection pools them. The test split is never
used: the fit sees no window a score is later computed on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import cache as cache_result
from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import FC_RANK_FIT_SEED, FC_RANK_FIT_WINDOWS
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.lowrank import FcRank
from sppdet.detector.training.inputs import FEATURE_CHUNK, MADE_BY, inputs_fingerprint
from sppdet.proposals.store import open_proposals

log = logging.getLogger(__name__)


def head_source(work: WorkDir, svm_made_from: dict[str, Any], scoring: str) -> dict[str, Any]:
    """What the head a scorer uses was made from, by the SVMs' record (SVM_MADE_FROM): the
    fine-tuning's fingerprint, or the backbone's head (``pretrained``) with the features'."""
    if scoring == "softmax":
        return {"head": work.load_model("finetune", MADE_BY["finetune"])["fingerprint"]}
    return {"head": svm_made_from["head"], "features": svm_made_from["features"]}


def model_file(compression: FcRank) -> str:
    """The name of the kept head in WORK/models: fc-rank-512-256 (fc-rank-512-256-weights)."""
    return f"fc-rank-{compression.ranks[0]}-{compression.ranks[1]}{compression.suffix}"


def compressed_head(
    work: WorkDir,
    head: FcHead | None,
    source: dict[str, Any],
    compression: FcRank,
    fit_split: str | None = None,
) -> FcHead:
    """HEAD with fc6 and fc7 replaced as COMPRESSION says (``FcHead.compressed``), read from
    WORK/models when that was made from the same head (SOURCE) and sample, else computed and
    saved there: seconds for a 1,024-wide head, a minute or more for a 4,096-wide one on a CPU.
    The responses' fit samples FIT_SPLIT (the SVMs' training split, ``svm_split``). The head's
    state is on the CPU, as HEAD's device is the caller's business."""
    ranks = ",".join(map(str, compression.ranks))
    if head is None:
        raise SppdetError(
            f"--fc-rank {ranks}: these SVMs read pool5, with no fc6/fc7 to compress ; leave out "
            "--fc-rank, or train the SVMs on fc7 (train-svm --layer fc7)"
        )
    made: dict[str, Any] = {"source": source, "fc_rank": list(compression.ranks)}
    windows = None
    if compression.fit == "responses":
        if fit_split is None:
            raise ValueError("the responses' fit needs the split to sample windows from")
        windows, sample = fit_windows(work, fit_split, FC_RANK_FIT_WINDOWS, FC_RANK_FIT_SEED)
        made["fit"] = sample
    name = model_file(compression)
    path = work.model(name)
    if path.is_file():
        saved = work.load_model(name, "sppdet detect --fc-rank")
        if saved.get("fingerprint") == fingerprint(made):
            head = head.cpu()
            head.load_state_dict(saved["head"])  # reshapes fc6/fc7 as the state has them
            return head
    start = time.perf_counter()
    small = head.cpu().compressed(compression.ranks, windows)
    log.info(
        "fc6/fc7 fitted at ranks %s (%s) in %.1f s: %s",
        ranks,
        compression.fit,
        time.perf_counter() - start,
        path,
    )
    state = {k: v.detach().cpu() for k, v in small.state_dict().items()}
    work.save_model(name, {"fingerprint": fingerprint(made), "made_from": made, "head": state})
    return small


def fit_split(work: WorkDir, svm: dict[str, Any], compression: FcRank) -> str | None:
    """The split COMPRESSION's fit samples windows from: the SVMs' training split
    (``svm_split``) for the responses' fit; None for the weights', which needs none."""
    return svm_split(work, svm) if compression.fit == "responses" else None


def svm_split(work: WorkDir, svm: dict[str, Any]) -> str:
    """The split the SVMs of model SVM were trained on: recorded by train-svm; for SVMs trained
    before it recorded it, the split of WORK whose proposals, features and images make the
    inputs fingerprint the SVMs were made from."""
    if "split" in svm:
        return str(svm["split"])
    for split in sorted(p.name for p in (work.root / "features").glob("*") if p.is_dir()):
        if not work.proposals(split).is_dir():
            continue
        with FeatureCache.open(work, split) as cache:
            made = inputs_fingerprint(
                open_proposals(work, split).fingerprint, cache.fingerprint, cache.image_ids
            )
        if made == svm["made_from"]["inputs"]:
            return split
    raise SppdetError(
        f"{work.model('svm')}: does not record its training split, and no split of the work "
        "folder matches the inputs it was trained on ; rerun `sppdet train-svm` (it records its "
        "split), or use --fc-rank-fit weights"
    )


def fit_windows(
    work: WorkDir, split: str, count: int, seed: int
) -> tuple[Callable[[], Iterator[torch.Tensor]], dict[str, Any]]:
    """(batches, record): a callable giving the pooled features of about COUNT proposals of
    SPLIT's images (the same ones at every call, float32 on the CPU, about FEATURE_CHUNK windows
    a batch), and what identifies that sample."""
    proposals = open_proposals(work, split)
    cache = FeatureCache.open(work, split)
    images = cache.image_ids
    if not images:
        raise SppdetError(f"{cache.store.root}: no cached images to fit --fc-rank on")

    @cache_result
    def picks() -> list[tuple[str, np.ndarray]]:
        """The sampled windows, drawn once, at the first fit (not when a kept head is read)."""
        rng = np.random.default_rng(seed)
        per_image = -(-count // len(images))
        chosen = []
        for image_id in images:
            boxes = proposals.boxes(image_id)
            take = rng.choice(len(boxes), size=min(per_image, len(boxes)), replace=False)
            if len(take):
                chosen.append((image_id, boxes[np.sort(take)]))
        if sum(len(b) for _, b in chosen) < 2:
            raise SppdetError(f"{proposals.root}: too few proposals to fit --fc-rank on")
        return chosen

    def batches() -> Iterator[torch.Tensor]:
        parts, size = [], 0
        for image_id, boxes in picks():
            parts.append(cache.pooled(image_id, boxes))
            size += len(boxes)
            if size >= FEATURE_CHUNK:
                yield torch.cat(parts)
                parts, size = [], 0
        if parts:
            yield torch.cat(parts)

    record = {
        "split": split,
        "inputs": fingerprint({"proposals": proposals.fingerprint, "features": cache.fingerprint}),
        "windows": count,
        "seed": seed,
    }
    return batches, record
