"""The fully connected head on pooled SPP features: fc6, fc7 and the classifier fc8.

fc6 and fc7 come from the backbone checkpoint when it has them (a ``pretrain`` checkpoint, or
torchvision's with the matching single-level pyramid); fc8 is new, with K+1 outputs (background
first) drawn from N(0, 0.01), as in the paper.

``input_scale`` multiplies the pooled features before fc6. It is 1 when fc6 is pretrained (fc6
expects the trunk's own activations); a randomly initialised fc6 gets the factor that brings the
mean input norm to a fixed value, so SGD sees the same input scale whatever the trunk's.

``compressed((r6, r7))`` is a copy whose fc6 and fc7 are rank-r layers (``lowrank``: the truncated
SVDs of the weights, or, given sample windows, the best fit to the layers' responses);
``fc_rank`` says which ranks a head has, and ``load_state_dict`` takes either kind of state,
shaping fc6/fc7 after it, so code that saves and loads heads needs no flag for it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sppdet.detector.heads.lowrank import (
    COMPRESSIBLE,
    LowRankLinear,
    check_rank,
    fitted_to_responses,
    truncated_svd,
)

LAYERS = ("pool5", "fc6", "fc7")


class FcHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int, num_outputs: int, dropout: float) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_dim, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, num_outputs)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("input_scale", torch.tensor(1.0))

    def init_fc8(self, std: float, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.fc8.weight.normal_(0.0, std, generator=generator)
            self.fc8.bias.zero_()

    @property
    def fc_rank(self) -> tuple[int, int] | None:
        """The ranks of fc6 and fc7 when they are truncated SVDs (a full layer counts its
        min(out, in)), else None."""
        layers = [getattr(self, name) for name in COMPRESSIBLE]
        if not any(isinstance(layer, LowRankLinear) for layer in layers):
            return None
        ranks = [
            layer.rank
            if isinstance(layer, LowRankLinear)
            else min(layer.in_features, layer.out_features)
            for layer in layers
        ]
        return ranks[0], ranks[1]

    def compressed(
        self,
        ranks: Sequence[int],
        windows: Callable[[], Iterable[torch.Tensor]] | None = None,
    ) -> FcHead:
        """A copy whose fc6 and fc7 are rank-RANKS (r6, r7) layers computed from this head's
        full layers; fc8 and the input scale are kept. Without WINDOWS, their truncated SVDs
        (the ``weights`` fit); with it, a callable giving batches of pooled windows afresh at
        each call, the ``responses`` fit: fc6 to its responses to those windows, then fc7 to
        its responses to the rank-r6 fc6's outputs, the inputs it will see."""
        if len(ranks) != len(COMPRESSIBLE):
            raise ValueError(f"give {len(COMPRESSIBLE)} ranks (fc6, fc7), not {list(ranks)}")
        for name in COMPRESSIBLE:
            layer = getattr(self, name)
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"{name} is compressed already (rank {layer.rank})")
        head = copy.deepcopy(self)
        with torch.no_grad():
            for name, rank in zip(COMPRESSIBLE, ranks, strict=True):
                layer = getattr(self, name)
                if windows is None:
                    low = truncated_svd(layer, int(rank), name)
                else:
                    below = head.fc6 if name == "fc7" else None
                    inputs = (head.layer_input(batch, below) for batch in windows())
                    low = fitted_to_responses(layer, int(rank), inputs, name)
                setattr(head, name, low)
        return head

    def layer_input(self, pooled: torch.Tensor, below: nn.Module | None) -> torch.Tensor:
        """fc6's input for POOLED windows, or with BELOW (an fc6) the next layer's."""
        x = pooled.to(self.input_scale.dtype) * self.input_scale
        return x if below is None else torch.relu(below(x))

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """``nn.Module.load_state_dict``, after shaping fc6/fc7 as the state has them: a full
        layer (``fc6.weight``) or a truncated SVD (``fc6.first.weight``, ``fc6.second.*``)."""
        for name in COMPRESSIBLE:
            layer = getattr(self, name)
            first = state_dict.get(f"{name}.first.weight")
            if first is not None and not (
                isinstance(layer, LowRankLinear) and layer.rank == first.shape[0]
            ):
                rank = check_rank(int(first.shape[0]), layer.out_features, layer.in_features, name)
                low = LowRankLinear(layer.in_features, layer.out_features, rank)
                setattr(self, name, low.train(self.training))
            elif f"{name}.weight" in state_dict and isinstance(layer, LowRankLinear):
                full = nn.Linear(layer.in_features, layer.out_features)
                setattr(self, name, full.train(self.training))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def features(self, pooled: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        """Activations after ReLU of LAYER (pool5 = the pooled input itself), no dropout."""
        if layer == "pool5":
            return pooled
        x = torch.relu(self.fc6(pooled * self.input_scale))
        if layer == "fc6":
            return x
        return torch.relu(self.fc7(x))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.relu(self.fc6(pooled * self.input_scale)))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.fc8(x)
