"""The fully connected head on pooled SPP features: fc6, fc7 and the classifier fc8.

fc6 and fc7 come from the backbone checkpoint when it has them (a ``pretrain`` checkpoint, or
torchvision's with the matching single-level pyramid); fc8 is new, with K+1 outputs (background
first) drawn from N(0, 0.01), as in the paper.

``input_scale`` multiplies the pooled features before fc6. It is 1 when fc6 is pretrained (fc6
expects the trunk's own activations); a randomly initialised fc6 gets the factor that brings the
mean input norm to a fixed value, so SGD sees the same input scale whatever the trunk's.
"""

from __future__ import annotations

import torch
from torch import nn

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
