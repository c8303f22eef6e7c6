"""Step (II): the object relevance map from cached value vectors (paper sec. 3.2, Fig. 7).

Fig. 7, for one sequence: per-head L2 normalisation, heads concatenated, S = X X^T per layer,
rollout term (S + I) / 2 row-normalised, the target token's row read at the visual columns,
summed over the selected layers, normalised to sum 1 per target token, multiplied over target
tokens. Only the target rows are ever needed, so we never build the N x N matrix:

    row t of (S + I)/2, normalised  =  (S[t, :] + e_t) / (S[t, :].sum() + 1)
    S[t, :].sum()                    =  x_t . sum_j x_j

which costs O(L * s * N * H*D) time and O(s * N) extra memory (plus one layer's norms).

`norm="fig7-literal"` runs Fig. 7's line `X_layer /= X_layer.sum(dim=-1)` as PyTorch would: the [N] row
sums broadcast along the LAST axis, so entry (t, j) is divided by row j's sum, i.e. each visual column
by that token's own total similarity (x_j . sum_k x_k + 1). Kept as an option (decisions.md D2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Features = torch.Tensor | Sequence[torch.Tensor]  # [O, H, N, D] or O tensors of [H, N, D]


def _as_index(idx, device) -> torch.Tensor:
    return torch.as_tensor(idx, dtype=torch.long, device=device).reshape(-1)


def token_maps(values: Features, target_idx, visual_idx, layers, norm: str = "row") -> torch.Tensor:
    """Per-target-token pseudo-attention summed over `layers` (before any normalisation).

    values: `[O, H, N, D]` (or a list of O `[H, N, D]` tensors, e.g. straight from a KV cache).
    norm: "row" (Fig. 7's comment) or "fig7-literal" (its code as PyTorch broadcasts it).
    Returns `[s, V]` float32: sum over layers of S[t, vis] / (S[t, :].sum() + 1)  ("row"),
    or of S[t, vis] / (S[vis, :].sum() + 1)  ("fig7-literal").
    """
    if norm not in ("row", "fig7-literal"):
        raise ValueError(f"unknown rollout normalisation {norm!r}; known: 'row', 'fig7-literal'")
    layers = list(layers)
    if not layers:
        raise ValueError("object_relevance needs at least one layer")
    dev = values[layers[0]].device
    t_idx, v_idx = _as_index(target_idx, dev), _as_index(visual_idx, dev)
    if t_idx.numel() == 0:
        raise ValueError("object_relevance needs at least one target token")
    out = torch.zeros(t_idx.numel(), v_idx.numel(), dtype=torch.float32, device=dev)
    for layer in layers:
        x = values[layer].float()                                   # [H, N, D]
        inv = 1.0 / x.norm(dim=-1).clamp_min(1e-12)                 # [H, N] per-head L2 norms
        t = x[:, t_idx] * inv[:, t_idx, None]                       # [H, s, D] unit vectors
        v = x[:, v_idx] * inv[:, v_idx, None]                       # [H, V, D]
        col_sum = torch.einsum("hnd,hn->hd", x, inv)                # [H, D] = sum_j x_j (unit)
        sim = torch.einsum("hsd,hvd->sv", t, v)                     # [s, V] sum of per-head cosines
        if norm == "row":
            row_sum = torch.einsum("hsd,hd->s", t, col_sum) + 1.0   # [s]  (+1: the identity)
            out += sim / row_sum[:, None]
        else:
            vis_sum = torch.einsum("hvd,hd->v", v, col_sum) + 1.0   # [V]  row sums of the visual tokens
            out += sim / vis_sum[None, :]
    return out


def combine_token_maps(maps: torch.Tensor, clamp_negative: bool = True) -> torch.Tensor:
    """`[s, V]` per-token maps -> `[V]` object relevance (normalise each, multiply, renormalise).

    Negative cosines would flip signs in the product, so by default each token map is clamped
    at 0 first (decisions.md D3). A token map that sums to 0 carries no information and is
    treated as uniform. The product is renormalised after every multiplication (sec. 3.2: "a
    normalization ... after every matrix addition and multiplication") so many tokens cannot
    underflow; this only rescales the map.
    """
    if clamp_negative:
        maps = maps.clamp_min(0.0)
    rel = torch.full_like(maps[0], 1.0 / maps.shape[1])
    for m in maps:
        total = m.sum()
        m = m / total if total.abs() > 1e-12 else torch.full_like(m, 1.0 / m.numel())
        rel = rel * m
        z = rel.sum()
        rel = rel / z if z.abs() > 1e-30 else torch.full_like(rel, 1.0 / rel.numel())
    return rel


def object_relevance(values: Features, target_idx, visual_idx, layers,
                     clamp_negative: bool = True, norm: str = "row") -> torch.Tensor:
    """Object relevance over the visual tokens, Fig. 7 semantics. Returns `[len(visual_idx)]`, sum 1.

    values: `[O, H, N, D]` value (or RoPE-free key) features of ONE sequence; target_idx: the
    target's text-token positions `[s]`; visual_idx: visual-token positions `[V]` (in grid order);
    layers: iterable of layer indices to aggregate; norm: see `token_maps`.
    """
    return combine_token_maps(token_maps(values, target_idx, visual_idx, layers, norm), clamp_negative)


def random_relevance(n: int, seed: int = 0, device=None) -> torch.Tensor:
    """The "random map" ablation (Tab. 3): i.i.d. uniform relevance, normalised, `[n]`."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(n, generator=g)
    return (r / r.sum()).to(device or "cpu")


def smooth_and_downsample(rel_map: torch.Tensor, sigma: float | None, factor: int = 1) -> torch.Tensor:
    """Gaussian filter then average-pool by `factor` (global-local maps, sec. 3.2; decisions.md D6).

    rel_map: `[h, w]`. Returns `[ceil(h/factor), ceil(w/factor)]`, renormalised to sum 1.
    """
    m = rel_map.float()[None, None]
    if sigma and sigma > 0:
        radius = max(1, int(round(3 * sigma)))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=m.device)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = k / k.sum()
        m = F.pad(m, (radius, radius, radius, radius), mode="replicate")
        m = F.conv2d(m, k.view(1, 1, 1, -1))
        m = F.conv2d(m, k.view(1, 1, -1, 1))
    if factor > 1:
        m = F.avg_pool2d(m, factor, stride=factor, ceil_mode=True)
    m = m[0, 0]
    return m / m.sum().clamp_min(1e-30)
