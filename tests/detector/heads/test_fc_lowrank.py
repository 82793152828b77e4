"""fc6/fc7 compressed by a truncated SVD (``heads.lowrank``, ``FcHead.compressed``): the layers
against an independent float64 SVD (numpy), full rank against the original layer, the rank
check, and heads saved and loaded with either kind of fc6/fc7."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.lowrank import LowRankLinear, linear_macs, truncated_svd

U32 = 2.0**-24  # float32 unit roundoff


def _layer(out_dim: int, in_dim: int, seed: int) -> nn.Linear:
    """A float32 layer whose singular values fall geometrically (ratio 0.9, from 3), so every
    truncation has a gap and the rank-r approximation is unique."""
    rng = np.random.default_rng(seed)
    k = min(out_dim, in_dim)
    left, _ = np.linalg.qr(rng.standard_normal((out_dim, k)))
    right, _ = np.linalg.qr(rng.standard_normal((in_dim, k)))
    layer = nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy((left * (3 * 0.9 ** np.arange(k))) @ right.T))
        layer.bias.copy_(torch.from_numpy(rng.standard_normal(out_dim) * 0.1))
    return layer


def _numpy_truncation(layer: nn.Linear, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(U_r [out, r], S_r Vt_r [r, in]) of the layer's float32 weight, by numpy in float64."""
    u, s, vt = np.linalg.svd(layer.weight.detach().double().numpy(), full_matrices=False)
    return u[:, :rank], s[:rank, None] * vt[:rank]


def _bound(left: np.ndarray, right: np.ndarray, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Worst-case float32 error of left @ (right @ x) + bias with both factors rounded to float32
    and two float32 matrix products (fan-ins in and r): to first order (in + r + 3) u times the
    same computation in absolute values (Higham, Accuracy and Stability, 3.5)."""
    fan_in = right.shape[1] + right.shape[0] + 3
    return fan_in * U32 * (np.abs(left) @ (np.abs(right) @ np.abs(x).T) + np.abs(bias)[:, None]).T


@pytest.mark.parametrize("out_dim, in_dim, rank", [(24, 64, 5), (24, 64, 17), (48, 20, 7)])
def test_truncated_layer_is_the_svd_truncation(out_dim: int, in_dim: int, rank: int) -> None:
    layer = _layer(out_dim, in_dim, seed=rank)
    low = truncated_svd(layer, rank, "fc6")
    assert (low.first.weight.shape, low.second.weight.shape) == ((rank, in_dim), (out_dim, rank))
    assert low.first.bias is None and low.first.weight.dtype == torch.float32
    x = torch.randn(9, in_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = low(x).double().numpy()
        full = layer(x).double().numpy()
    left, right = _numpy_truncation(layer, rank)
    bias = layer.bias.detach().double().numpy()
    want = x.double().numpy() @ (left @ right).T + bias
    bound = _bound(left, right, x.double().numpy(), bias)
    assert (np.abs(got - want) <= bound).all()
    assert np.abs(full - want).max() > 100 * bound.max()  # the truncation is visible


@pytest.mark.parametrize("out_dim, in_dim", [(24, 64), (30, 30), (48, 20)])
def test_full_rank_reproduces_the_layer(out_dim: int, in_dim: int) -> None:
    layer = _layer(out_dim, in_dim, seed=3)
    rank = min(out_dim, in_dim)
    low = truncated_svd(layer, rank)
    x = torch.randn(9, in_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, original = low(x).double().numpy(), layer(x).double().numpy()
    left, right = _numpy_truncation(layer, rank)
    bias = layer.bias.detach().double().numpy()
    weight = layer.weight.detach().double().numpy()
    # the compressed layer's bound, plus the original layer's own float32 product (fan-in in + 1)
    plain = (in_dim + 1) * U32 * (np.abs(x.double().numpy()) @ np.abs(weight).T + np.abs(bias))
    assert (np.abs(got - original) <= _bound(left, right, x.double().numpy(), bias) + plain).all()


@pytest.mark.parametrize("rank", [0, 21, 100])
def test_a_rank_out_of_range_is_a_one_line_error(rank: int) -> None:
    with pytest.raises(SppdetError) as error:
        truncated_svd(_layer(48, 20, seed=0), rank, "fc7")
    message = str(error.value)
    assert "\n" not in message
    assert f"--fc-rank {rank} for fc7 (48 x 20)" in message and "from 1 to 20" in message


def test_multiply_adds_per_window() -> None:
    assert linear_macs(nn.Linear(12800, 4096)) == 12800 * 4096
    assert linear_macs(LowRankLinear(12800, 4096, 512)) == 512 * (12800 + 4096)


def _head() -> FcHead:
    torch.manual_seed(0)
    head = FcHead(40, 24, 3, 0.0).eval()
    head.input_scale.fill_(1.5)
    return head


def test_compressed_head_keeps_fc8_and_the_input_scale() -> None:
    head = _head()
    small = head.compressed((6, 24))
    assert head.fc_rank is None and small.fc_rank == (6, 24)
    assert isinstance(head.fc6, nn.Linear)  # the original is left as it was
    pooled = torch.randn(5, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = small.fc8(torch.relu(small.fc7(torch.relu(small.fc6(pooled * 1.5)))))
        assert torch.equal(small(pooled), want)
        assert torch.equal(small.fc8.weight, head.fc8.weight)
    with pytest.raises(ValueError, match="give 2 ranks"):
        head.compressed((6,))
    with pytest.raises(ValueError, match="fc6 is compressed already"):
        small.compressed((3, 3))


def test_head_state_loads_into_a_head_of_either_kind() -> None:
    head = _head()
    small = head.compressed((6, 9))
    pooled = torch.randn(5, 40, generator=torch.Generator().manual_seed(5))
    fresh = FcHead(40, 24, 3, 0.0).eval()
    fresh.load_state_dict(small.state_dict())
    assert fresh.fc_rank == (6, 9) and isinstance(fresh.fc7, LowRankLinear)
    with torch.no_grad():
        assert torch.equal(fresh(pooled), small(pooled))
    fresh.load_state_dict(head.state_dict())  # and back to full layers
    assert fresh.fc_rank is None
    with torch.no_grad():
        assert torch.equal(fresh(pooled), head(pooled))
    state = dict(small.state_dict())
    state["fc6.first.weight"] = torch.zeros(30, 40)
    with pytest.raises(SppdetError, match="--fc-rank 30 for fc6"):
        FcHead(40, 24, 3, 0.0).load_state_dict(state)
