"""object_relevance against a literal Fig. 7 implementation, and on a planted signal."""
import pytest
import torch

from focuslib.core.relevance import object_relevance, random_relevance, smooth_and_downsample


def fig7_reference(X, x_target, x_visual, x_layer, clamp_negative, literal=False):
    """Fig. 7 as printed (N x N matrices), with row-wise normalisation as its comment says, or
    (literal=True) with its line `X_layer /= X_layer.sum(dim=-1)` run verbatim in PyTorch."""
    O, H, N, D = X.shape
    X = torch.nn.functional.normalize(X.double(), dim=-1)
    X = X.permute(0, 2, 1, 3).reshape(O, N, H * D)
    X = torch.bmm(X, X.permute(0, 2, 1))                       # O, N, N
    rel = torch.ones(len(x_visual), dtype=torch.float64)
    for t in x_target:
        pa = torch.zeros(len(x_visual), dtype=torch.float64)
        for layer in x_layer:
            Xl = (X[layer] + torch.eye(N, dtype=torch.float64)) / 2
            if literal:
                Xl /= Xl.sum(dim=-1)          # [N, N] / [N]: broadcasts over the LAST axis (columns)
            else:
                Xl = Xl / Xl.sum(dim=-1, keepdim=True)
            pa += Xl[t, x_visual]
        if clamp_negative:
            pa = pa.clamp_min(0)
        pa /= pa.sum()
        rel *= pa
    return rel / rel.sum()


@pytest.mark.parametrize("shape,seed", [((4, 2, 40, 8), 0), ((6, 4, 70, 16), 1), ((3, 1, 25, 5), 2),
                                        ((8, 8, 120, 4), 3)])
@pytest.mark.parametrize("clamp", [False, True])
def test_matches_fig7_reference(shape, seed, clamp):
    g = torch.Generator().manual_seed(seed)
    O, H, N, D = shape
    # positive offset keeps row sums away from zero so the unclamped variant is well defined
    X = torch.randn(shape, generator=g) + 0.5
    perm = torch.randperm(N, generator=g)
    visual = perm[: N // 2].tolist()
    target = perm[N // 2: N // 2 + 3].tolist()
    layers = list(range(1, O))
    ours = object_relevance(X, target, visual, layers, clamp_negative=clamp)
    ref = fig7_reference(X, target, visual, layers, clamp).float()
    assert ours.shape == (len(visual),)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-9)
    # a list of per-layer [H, N, D] tensors (as read from a KV cache) gives the same map
    torch.testing.assert_close(object_relevance(list(X), target, visual, layers, clamp), ours)


def test_layers_matter():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(4, 2, 30, 8, generator=g)
    a = object_relevance(X, [20], range(16), [0, 1])
    b = object_relevance(X, [20], range(16), [2, 3])
    assert not torch.allclose(a, b)


def test_planted_block_wins():
    g = torch.Generator().manual_seed(7)
    O, H, D, grid = 6, 4, 16, 12
    N = grid * grid + 10
    X = torch.randn(O, H, N, D, generator=g)
    target = [grid * grid + 4, grid * grid + 5]
    block = [r * grid + c for r in range(3, 6) for c in range(7, 10)]
    for t in target:  # the target tokens resemble the planted block at every layer and head
        X[:, :, t] = X[:, :, block].mean(2) + 0.1 * torch.randn(O, H, D, generator=g)
    rel = object_relevance(X, target, range(grid * grid), range(2, O)).view(grid, grid)
    r, c = divmod(int(rel.argmax()), grid)
    assert (r * grid + c) in block
    assert rel.view(-1)[block].sum() > 0.5  # most of the mass sits on 9 of 144 cells


def test_random_map_is_normalised_and_seeded():
    a, b, c = random_relevance(50, seed=1), random_relevance(50, seed=1), random_relevance(50, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.sum()) - 1) < 1e-6 and (a >= 0).all()


def test_smooth_and_downsample():
    m = torch.zeros(8, 12)
    m[5, 9] = 1.0
    s = smooth_and_downsample(m, sigma=1.0, factor=2)
    assert s.shape == (4, 6)
    assert abs(float(s.sum()) - 1) < 1e-6
    assert divmod(int(s.argmax()), 6) == (2, 4)   # the peak stays where it was (5//2, 9//2)
    # odd sizes: ceil mode keeps the last row/column
    assert smooth_and_downsample(torch.rand(7, 9), None, 2).shape == (4, 5)


@pytest.mark.parametrize("shape,seed", [((4, 2, 40, 8), 0), ((6, 4, 70, 16), 1), ((8, 8, 120, 4), 3)])
@pytest.mark.parametrize("clamp", [False, True])
def test_fig7_literal_option_matches_verbatim_code(shape, seed, clamp):
    """rollout_norm="fig7-literal" equals Fig. 7's code run verbatim, and differs from the row-wise map."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(shape, generator=g) + 0.5
    N = shape[2]
    perm = torch.randperm(N, generator=g)
    visual, target, layers = perm[: N // 2].tolist(), perm[N // 2: N // 2 + 3].tolist(), list(range(1, shape[0]))
    ours = object_relevance(X, target, visual, layers, clamp, norm="fig7-literal")
    ref = fig7_reference(X, target, visual, layers, clamp, literal=True).float()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(ours, object_relevance(X, target, visual, layers, clamp), rtol=1e-3)
    with pytest.raises(ValueError):
        object_relevance(X, target, visual, layers, clamp, norm="column")


def test_fig7_literal_divides_by_each_visual_tokens_row_sum():
    """Hand check on one layer: a visual token similar to everything (a "hub") is damped by the literal
    division and not by the row-wise one."""
    X = torch.tensor([[[[1.0, 0.0], [1.0, 0.2], [1.0, 0.0], [0.0, 1.0]]]])  # O=1, H=1, N=4, D=2
    row = object_relevance(X, [0], [1, 3], [0], clamp_negative=True)
    lit = object_relevance(X, [0], [1, 3], [0], clamp_negative=True, norm="fig7-literal")
    Xn = torch.nn.functional.normalize(X[0, 0], dim=-1)
    S = Xn @ Xn.T
    expect_row = S[0, [1, 3]] / S[0, [1, 3]].sum()
    lit_raw = S[0, [1, 3]] / (S[[1, 3]].sum(-1) + 1)
    torch.testing.assert_close(row, expect_row)
    torch.testing.assert_close(lit, lit_raw / lit_raw.sum())
