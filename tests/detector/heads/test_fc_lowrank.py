"""fc6/fc7 at low rank (``heads.lowrank``, ``FcHead.compressed``): the weights' truncated SVD and
the responses' fit against independent float64 computations (numpy), full rank against the
original layer, the rank check, and heads saved and loaded with either kind of fc6/fc7."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.lowrank import (
    FcRank,
    LowRankLinear,
    fitted_to_responses,
    linear_macs,
    truncated_svd,
)

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


def _inputs(count: int, in_dim: int, seed: int, dims: int | None = None) -> torch.Tensor:
    """COUNT float32 inputs around a mean far from 0, their spread falling geometrically (ratio
    0.85) over DIMS random directions (all IN_DIM when None), like pooled conv5 features."""
    rng = np.random.default_rng(seed)
    dims = dims or in_dim
    directions, _ = np.linalg.qr(rng.standard_normal((in_dim, dims)))
    spread = rng.standard_normal((count, dims)) * 0.85 ** np.arange(dims)
    return torch.from_numpy(3 + spread @ directions.T).float()


def _numpy_response_fit(layer: nn.Linear, x: torch.Tensor, rank: int) -> np.ndarray:
    """The responses' fit's outputs on X by numpy in float64: b + m + P_r (W x - m), P_r the
    projection on the top RANK principal directions of the centred responses (their SVD)."""
    weight = layer.weight.detach().double().numpy()
    responses = x.double().numpy() @ weight.T
    mean = responses.mean(0)
    _, _, vt = np.linalg.svd(responses - mean, full_matrices=False)
    top = vt[:rank].T
    kept = mean + (responses - mean) @ top @ top.T
    return kept + layer.bias.detach().double().numpy()


@pytest.mark.parametrize("out_dim, in_dim, rank", [(24, 64, 3), (24, 64, 6), (48, 20, 5)])
def test_response_fit_is_the_principal_subspace_of_the_outputs(
    out_dim: int, in_dim: int, rank: int
) -> None:
    layer = _layer(out_dim, in_dim, seed=rank)
    x = _inputs(600, in_dim, seed=rank)
    low = fitted_to_responses(layer, rank, x.split(250), "fc6")  # three batches
    assert (low.first.weight.shape, low.second.weight.shape) == ((rank, in_dim), (out_dim, rank))
    with torch.no_grad():
        got = low(x).double().numpy()
    want = _numpy_response_fit(layer, x, rank)
    # float32 responses carry a relative error of at most in_dim * u (4e-6 here); the covariance
    # inherits it, and the kept subspace turns by that over the relative eigengap (>= 0.02, checked
    # below): <= 2e-4 rad, moving the outputs by less than 1e-4 of their size, as the spread is
    # a fraction of the mean. The layer's two float32 products add (in + r + 3) u.
    weight = layer.weight.detach().double().numpy()
    variances = np.linalg.eigvalsh(np.cov((x.double().numpy() @ weight.T).T))[::-1]
    assert (variances[rank - 1] - variances[rank]) / variances[0] >= 0.02
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    # The test can tell the subspace: one direction fewer moves the outputs 10x the tolerance.
    assert np.abs(_numpy_response_fit(layer, x, rank - 1) - want).max() > 1e-3 * scale


def test_response_fit_is_exact_on_inputs_of_that_rank_where_the_svd_is_not() -> None:
    layer = _layer(32, 64, seed=11)
    x = _inputs(400, 64, seed=12, dims=4)  # an affine subspace: 4 directions around a mean
    with torch.no_grad():
        want = layer(x).double()
        fitted = fitted_to_responses(layer, 4, [x]).forward(x).double()
        svd = truncated_svd(layer, 4).forward(x).double()
    scale = float(want.abs().max())
    # Exact but for float32 rounding: the responses fill 4 directions, so rank 4 loses nothing.
    assert float((fitted - want).abs().max()) < 64 * 1e-5 * scale
    assert float((svd - want).abs().max()) > 0.1 * scale  # the weights' fit ignores the inputs


def test_response_fit_at_full_rank_reproduces_the_layer() -> None:
    layer = _layer(12, 30, seed=3)
    x = _inputs(200, 30, seed=4)
    with torch.no_grad():
        got = fitted_to_responses(layer, 12, [x]).forward(x)
        want = layer(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


def test_compressed_head_fits_fc7_to_what_the_compressed_fc6_gives_it() -> None:
    head = _head()
    pooled = torch.randn(90, 40, generator=torch.Generator().manual_seed(6)).abs()
    small = head.compressed((5, 7), lambda: iter(pooled.split(40)))
    assert small.fc_rank == (5, 7) and head.fc_rank is None
    batches = (pooled * 1.5).split(40)  # as compressed() sees them: the input scale applied
    with torch.no_grad():
        fc6 = fitted_to_responses(head.fc6, 5, batches)
        fc7 = fitted_to_responses(head.fc7, 7, [torch.relu(fc6(b)) for b in batches])
    for name, want in (("fc6", fc6), ("fc7", fc7)):
        for key, value in want.state_dict().items():
            assert torch.equal(getattr(small, name).state_dict()[key], value), (name, key)
    with pytest.raises(ValueError, match="at least 2 sample inputs"):
        head.compressed((5, 7), lambda: iter([pooled[:1]]))


def test_fc_rank_names_its_fit() -> None:
    assert FcRank((512, 256)).tag == "512x256"
    assert FcRank((512, 256), "weights").tag == "512x256-weights"
    assert FcRank((4, 3)).record() == {"fc_rank": [4, 3], "fc_rank_fit": "responses"}
    with pytest.raises(SppdetError, match="--fc-rank-fit 'pca': choose one of responses, weights"):
        FcRank((4, 3), "pca")
