"""Tests for focuslib.core.rois: ROI proposal (paper sec. 3.3 / A.5) and box geometry (step V's composition:
tests/test_compose.py)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import numpy as np
import pytest
import torch

from focuslib.core.rois import (
    Roi,
    box_center,
    box_distance,
    box_iou,
    clip_box,
    grid_to_pixel,
    grow_roi,
    nms,
    pixel_to_cells,
    propose_rois,
    symmetric_roi,
    top_k_anchors,
    union_box,
)

SEEDS = range(8)


def _overlap_area(a, b) -> int:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return iw * ih if iw > 0 and ih > 0 else 0


# --------------------------------------------------------------------------- #
# top_k_anchors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("s_dist", [0, 1, 2, 3, 2.5])
def test_anchors_spacing_order_validity(seed, s_dist):
    g = torch.Generator().manual_seed(seed)
    rel = torch.rand(12, 17, generator=g)
    valid = torch.rand(12, 17, generator=g) > 0.3
    anchors = top_k_anchors(rel, k=10, s_dist=s_dist, valid=valid)
    assert 0 < len(anchors) <= 10
    assert len(set(anchors)) == len(anchors)
    for (r1, c1), (r2, c2) in itertools.combinations(anchors, 2):
        assert math.hypot(r1 - r2, c1 - c2) >= s_dist
    scores = [float(rel[a]) for a in anchors]
    assert scores == sorted(scores, reverse=True)
    assert all(bool(valid[a]) for a in anchors)
    # greedy optimality: any valid cell more relevant than the last anchor was
    # rejected only because it is too close to a more relevant accepted anchor
    last = scores[-1]
    for r in range(12):
        for c in range(17):
            if (r, c) in anchors or not valid[r, c] or float(rel[r, c]) <= last:
                continue
            assert any(
                math.hypot(r - ar, c - ac) < s_dist and float(rel[ar, ac]) >= float(rel[r, c]) for ar, ac in anchors
            )


def test_anchors_exhaust_map_when_k_large():
    rel = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    anchors = top_k_anchors(rel, k=1000, s_dist=2)
    # fewer than k accepted -> every cell must be blocked by some anchor
    assert len(anchors) < 1000
    for r, c in itertools.product(range(6), range(6)):
        assert any(math.hypot(r - ar, c - ac) < 2 for ar, ac in anchors)


def test_anchors_ties_row_major_and_distance_equal_allowed():
    # constant map: pure tie-breaking by row-major index; distance exactly 2 is accepted
    anchors = top_k_anchors(torch.ones(4, 4), k=100, s_dist=2)
    assert anchors == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert top_k_anchors(torch.ones(4, 4), k=2, s_dist=2) == [(0, 0), (0, 2)]
    # large tie set (unstable sorts reorder these): still row-major
    assert top_k_anchors(torch.zeros(12, 12), k=200, s_dist=0) == list(itertools.product(range(12), range(12)))


def test_anchors_planted_peak_first():
    rel = torch.rand(24, 24, generator=torch.Generator().manual_seed(3)) * 0.1
    rel[17, 5] = 5.0
    rel[3, 20] = 4.0
    rel[17, 6] = 4.5  # next to the peak: must be suppressed by s_dist
    anchors = top_k_anchors(rel, k=5, s_dist=2)
    assert anchors[0] == (17, 5)
    assert anchors[1] == (3, 20)
    assert (17, 6) not in anchors
    # masking out the peak promotes the next one
    valid = torch.ones(24, 24, dtype=torch.bool)
    valid[17, 5] = False
    assert top_k_anchors(rel, k=1, s_dist=2, valid=valid) == [(17, 6)]


def test_anchors_edge_cases():
    assert top_k_anchors(torch.ones(3, 3), k=0, s_dist=1) == []
    assert top_k_anchors(torch.ones(3, 3), k=5, s_dist=1, valid=torch.zeros(3, 3, dtype=torch.bool)) == []
    with pytest.raises(ValueError):
        top_k_anchors(torch.ones(3, 3, 1), k=1, s_dist=1)
    with pytest.raises(ValueError):
        top_k_anchors(torch.ones(3, 3), k=1, s_dist=1, valid=torch.ones(3, 4, dtype=torch.bool))


# --------------------------------------------------------------------------- #
# symmetric_roi
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("h,w", [(7, 9), (1, 5), (4, 4)])
def test_symmetric_roi_inside_with_requested_size(h, w):
    for size in range(1, 12):
        for r, c in itertools.product(range(h), range(w)):
            r0, c0, r1, c1 = symmetric_roi((r, c), size, h, w)
            assert 0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w
            assert r1 - r0 == min(size, h) and c1 - c0 == min(size, w)
            assert r0 <= r < r1 and c0 <= c < c1


def test_symmetric_roi_centering_and_shift():
    assert symmetric_roi((5, 5), 3, 11, 11) == (4, 4, 7, 7)
    assert symmetric_roi((5, 5), 4, 11, 11) == (4, 4, 8, 8)  # extra cell bottom/right
    assert symmetric_roi((0, 0), 5, 11, 11) == (0, 0, 5, 5)  # corner: shifted, not shrunk
    assert symmetric_roi((10, 10), 5, 11, 11) == (6, 6, 11, 11)
    assert symmetric_roi((0, 10), 3, 11, 11) == (0, 8, 3, 11)
    assert symmetric_roi((1, 2), 9, 3, 20) == (0, 0, 3, 9)  # too tall: clamp rows only
    with pytest.raises(ValueError):
        symmetric_roi((3, 0), 3, 3, 3)
    with pytest.raises(ValueError):
        symmetric_roi((0, 0), 0, 3, 3)


# --------------------------------------------------------------------------- #
# grow_roi
# --------------------------------------------------------------------------- #


def _plateau(h, w, r0, c0, r1, c1, dtype=torch.float64):
    m = torch.zeros(h, w, dtype=dtype)
    m[r0:r1, c0:c1] = 1.0
    return m


@pytest.mark.parametrize("plateau", [5, 7, 9])
def test_grow_covers_plateau_and_not_beyond(plateau):
    h = w = 21
    lo = 10 - plateau // 2
    m = _plateau(h, w, lo, lo, lo + plateau, lo + plateau)
    box = grow_roi(m, (10, 10), s_min=3, s_max=15, t_expand=0.9, rule="anchor")
    assert box == (lo, lo, lo + plateau, lo + plateau)


def test_grow_plateau_at_corner_is_shifted():
    m = _plateau(16, 16, 0, 0, 5, 5)
    # anchor at the corner: every candidate box is shifted into the map
    assert grow_roi(m, (0, 0), s_min=3, s_max=11, t_expand=0.9, rule="anchor") == (0, 0, 5, 5)


def test_grow_threshold_is_inclusive_and_exact():
    # 3x3 of ones, the 5x5 ring sums to 3.5 -> mean(5x5) = 12.5/25 = 0.5 exactly
    m = torch.zeros(9, 9, dtype=torch.float64)
    m[2:7, 2:7] = 3.5 / 16
    m[3:6, 3:6] = 1.0
    assert float(m[2:7, 2:7].mean()) == 0.5
    assert grow_roi(m, (4, 4), 3, 7, t_expand=0.5, rule="anchor") == (2, 2, 7, 7)
    assert grow_roi(m, (4, 4), 3, 7, t_expand=0.5 + 1e-9, rule="anchor") == (3, 3, 6, 6)


def test_grow_stops_at_first_refusal():
    # size 5 fails, size 7 would pass: growth must not skip over the refusal
    m = torch.full((7, 7), 100.0)
    m[1:6, 1:6] = 0.0
    m[2:5, 2:5] = 1.0
    assert float(m.mean()) >= 0.5
    assert grow_roi(m, (3, 3), 3, 7, t_expand=0.5, rule="anchor") == (2, 2, 5, 5)


@pytest.mark.parametrize("seed", SEEDS)
def test_grow_never_exceeds_s_max(seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(15, 20, generator=g)
    for s_min, s_max in [(1, 1), (3, 3), (3, 4), (3, 5), (1, 8), (3, 9)]:
        for anchor in [(0, 0), (7, 10), (14, 19), (2, 18)]:
            # t_expand=0 accepts every step: the box must reach s_max (or the largest size <= s_max)
            r0, c0, r1, c1 = grow_roi(m, anchor, s_min, s_max, t_expand=0.0)
            expected = s_min + 2 * ((s_max - s_min) // 2)
            assert r1 - r0 == c1 - c0 == expected <= s_max
            r0, c0, r1, c1 = grow_roi(m, anchor, s_min, s_max, t_expand=0.5)
            assert s_min <= r1 - r0 <= s_max and (r1 - r0 - s_min) % 2 == 0
    with pytest.raises(ValueError):
        grow_roi(m, (0, 0), 5, 3, 0.5)
    with pytest.raises(ValueError):
        grow_roi(m, (0, 0), 3, 5, 0.5, rule="ring")


# --- the default rule: threshold x mean(map) (decisions.md D4, Tab. 12b/c) ----------------------


def test_grow_map_mean_threshold_is_exact_and_inclusive():
    # 9x9 map, mean 1: a 5x5 box of mean exactly 0.5 is accepted at t=0.5, refused just above
    m = torch.ones(9, 9, dtype=torch.float64)
    m[2:7, 2:7] = 0.5
    m[0:2, :] += (81 - float(m.sum())) / 18  # put the rest of the mass in the top two rows
    assert float(m.mean()) == pytest.approx(1.0) and float(m[2:7, 2:7].mean()) == 0.5
    assert grow_roi(m, (4, 4), 3, 5, 0.5, rule="map-mean") == (2, 2, 7, 7)
    assert grow_roi(m, (4, 4), 3, 5, 0.5 + 1e-9, rule="map-mean") == (3, 3, 6, 6)


def test_grow_map_mean_ignores_padding_cells():
    # letterboxed map: rows 0-3 padding (0). A box reaching into padding averages its real cells only,
    # and the reference is the mean of the real cells, so padding neither blocks nor helps growth
    m = torch.zeros(12, 12, dtype=torch.float64)
    m[4:] = 1.0
    valid = torch.zeros(12, 12, dtype=torch.bool)
    valid[4:] = True
    assert grow_roi(m, (4, 5), 3, 7, 0.95, rule="map-mean", valid=valid) == (1, 2, 8, 9)
    # without the mask: reference 96/144, the 5x5 box has 15 real of 25 cells (0.6 < 0.95 * 0.667)
    assert grow_roi(m, (4, 5), 3, 7, 0.95, rule="map-mean") == (3, 4, 6, 7)


def _peaked(seed: int, h: int = 24, w: int = 24) -> torch.Tensor:
    """Log-normal background + 1-3 sharp Gaussian objects (2-20x background), squared (two tokens)."""
    g = np.random.default_rng(seed)
    m = g.lognormal(0, 0.5, (h, w))
    rr, cc = np.mgrid[0:h, 0:w]
    for _ in range(g.integers(1, 4)):
        r, c, sig = g.uniform(2, h - 3), g.uniform(2, w - 3), g.uniform(0.6, 2.0)
        m += g.uniform(2, 20) * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sig**2))
    m = torch.tensor(m**2)
    return m / m.sum()


def _top(m, t, s_max=5, rule="map-mean"):
    return propose_rois(m, 30, 3, s_max, 2, t, 0.3, growth_rule=rule)


def test_top_roi_reaches_s_max_and_threshold_does_not_matter():
    """Tab. 12b/c: t_expand in [0.3, 0.7] leaves the top ROI alone, s_max sets its size. Under the old
    anchor-relative rule the top ROI mostly stays at s_min (3 cells = 282 px on V*, below 336)."""
    maps = [_peaked(s) for s in range(40)]
    for s_max in (5, 7, 9):
        tops = [_top(m, 0.5, s_max)[0].grid for m in maps]
        assert all(b[2] - b[0] == b[3] - b[1] == s_max for b in tops)
    changed = []
    for m in maps:
        ref = _top(m, 0.5)
        for t in (0.3, 0.4, 0.6, 0.7):
            props = _top(m, t)
            assert props[0].grid == ref[0].grid
        changed.append(len({r.grid for r in ref[:8]} - {p.grid for p in _top(m, 0.3)[:8]}) / 8)
    assert np.mean(changed) < 0.15   # only a few background ROIs change (sweep: ~9% at t=0.3)
    old = [_top(m, 0.5, rule="anchor")[0].grid for m in maps]
    assert sum(b[2] - b[0] == 5 for b in old) < len(maps) / 2
    assert sum(_top(m, 0.3, rule="anchor")[0].grid != _top(m, 0.7, rule="anchor")[0].grid for m in maps) > 5


# --------------------------------------------------------------------------- #
# box_iou / nms
# --------------------------------------------------------------------------- #


def test_box_iou_hand_computed():
    a = (0, 0, 10, 10)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, (0, 5, 10, 15)) == pytest.approx(50 / 150)
    assert box_iou(a, (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou(a, (10, 0, 20, 10)) == 0.0  # touching, half-open
    assert box_iou(a, (2, 2, 4, 4)) == pytest.approx(4 / 100)
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_nms_threshold_boundary():
    a, b, c = (0, 0, 10, 10), (0, 5, 10, 15), (5, 5, 15, 15)
    # IoU(a,b)=1/3, IoU(a,c)=1/7, IoU(b,c)=50/150=1/3
    boxes, scores = [b, a, c], [0.8, 0.9, 0.7]
    assert nms(boxes, scores, 50 / 150) == [1, 0, 2]  # at threshold: kept
    assert nms(boxes, scores, 0.3) == [1, 2]  # b dropped (1/3 > 0.3), c kept (1/7)
    assert nms(boxes, scores, 0.1) == [1]
    assert nms(boxes, torch.tensor(scores), 0.3) == [1, 2]
    # stable for equal scores
    assert nms([a, a, c], [1.0, 1.0, 1.0], 0.5) == [0, 2]
    assert nms([], [], 0.5) == []
    with pytest.raises(ValueError):
        nms([a], [1.0, 2.0], 0.5)


# --------------------------------------------------------------------------- #
# propose_rois
# --------------------------------------------------------------------------- #


def _blobs(h, w, centers, sigma=1.5):
    rr, cc = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    m = torch.zeros(h, w)
    for (r, c), amp in centers:
        m += amp * torch.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2))
    return m


def test_propose_rois_ranked_diverse_and_planted_first():
    rel = _blobs(24, 24, [((6, 18), 1.0), ((15, 4), 0.7)])
    rel += torch.rand(24, 24, generator=torch.Generator().manual_seed(0)) * 0.01
    rois = propose_rois(rel, k=30, s_min=3, s_max=5, s_dist=2, t_expand=0.5, nms_threshold=0.2)
    assert rois and all(isinstance(r, Roi) for r in rois)
    assert rois[0].anchor == (6, 18)
    assert rois[0].score == pytest.approx(float(rel[6, 18]))
    assert rois[0].grid[0] <= 6 < rois[0].grid[2] and rois[0].grid[1] <= 18 < rois[0].grid[3]
    assert any(r.anchor == (15, 4) for r in rois)
    scores = [r.score for r in rois]
    assert scores == sorted(scores, reverse=True)
    for r in rois:
        r0, c0, r1, c1 = r.grid
        assert 3 <= r1 - r0 <= 5 and 3 <= c1 - c0 <= 5
        assert r.score == float(rel[r.anchor])
    for a, b in itertools.combinations(rois, 2):
        assert box_iou(a.grid, b.grid) <= 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        rois[0].score = 0.0  # type: ignore[misc]


def test_propose_rois_respects_valid():
    rel = _blobs(10, 10, [((2, 2), 1.0), ((7, 7), 0.5)])
    valid = torch.ones(10, 10, dtype=torch.bool)
    valid[:5, :5] = False
    rois = propose_rois(rel, k=10, s_min=3, s_max=5, s_dist=2, t_expand=0.5, nms_threshold=0.3, valid=valid)
    assert rois[0].anchor == (7, 7)
    assert all(bool(valid[r.anchor]) for r in rois)


# --------------------------------------------------------------------------- #
# grid <-> pixel on a letterboxed layout
# --------------------------------------------------------------------------- #


def _letterbox_cells(img_w=672, img_h=224, grid=24):
    """Cell boxes of a grid x grid map over img_w x img_h letterboxed (centred) into a square."""
    side = max(img_w, img_h)
    cell = side / grid
    pad_x, pad_y = (side - img_w) / 2, (side - img_h) / 2
    cb = torch.zeros(grid, grid, 4)
    for r in range(grid):
        for c in range(grid):
            x0, x1 = c * cell - pad_x, (c + 1) * cell - pad_x
            y0, y1 = r * cell - pad_y, (r + 1) * cell - pad_y
            cb[r, c] = torch.tensor(
                [min(max(x0, 0), img_w), min(max(y0, 0), img_h), min(max(x1, 0), img_w), min(max(y1, 0), img_h)]
            )
    return cb


def test_grid_to_pixel_letterbox():
    cb = _letterbox_cells()  # 28 px cells; rows 0-7 and 16-23 are padding
    assert grid_to_pixel((0, 0, 8, 24), cb) is None
    assert grid_to_pixel((16, 3, 24, 9), cb) is None
    assert grid_to_pixel((5, 5, 5, 9), cb) is None  # empty box
    assert grid_to_pixel((8, 0, 16, 24), cb) == (0, 0, 672, 224)
    assert grid_to_pixel((6, 2, 10, 5), cb) == (56, 0, 140, 56)  # padding rows ignored
    assert grid_to_pixel((0, 0, 24, 24), cb) == (0, 0, 672, 224)


def test_grid_to_pixel_rounds_outward():
    cb = torch.tensor([[[0.4, 0.6, 2.5, 3.2], [2.5, 0.6, 5.1, 3.2]]])
    assert grid_to_pixel((0, 0, 1, 2), cb) == (0, 0, 6, 4)


def test_pixel_to_cells_letterbox():
    cb = _letterbox_cells()
    mask = pixel_to_cells((56, 0, 140, 56), cb)
    expected = torch.zeros(24, 24, dtype=torch.bool)
    expected[8:10, 2:5] = True
    assert torch.equal(mask, expected)
    # a box that merely touches cell edges doesn't select the neighbours
    assert pixel_to_cells((28, 28, 56, 56), cb).nonzero().tolist() == [[9, 1]]
    # padding cells are never selected, even for the whole image
    full = pixel_to_cells((0, 0, 672, 224), cb)
    assert full[8:16].all() and not full[:8].any() and not full[16:].any()


@pytest.mark.parametrize("seed", SEEDS)
def test_grid_pixel_roundtrip_letterbox(seed):
    cb = _letterbox_cells()
    real = (cb[..., 2] > cb[..., 0]) & (cb[..., 3] > cb[..., 1])
    rng = random.Random(seed)
    for _ in range(25):
        r0, r1 = sorted(rng.sample(range(25), 2))
        c0, c1 = sorted(rng.sample(range(25), 2))
        pix = grid_to_pixel((r0, c0, r1, c1), cb)
        sel = torch.zeros(24, 24, dtype=torch.bool)
        sel[r0:r1, c0:c1] = True
        sel &= real
        if not sel.any():
            assert pix is None
            continue
        assert torch.equal(pixel_to_cells(pix, cb), sel)


# --------------------------------------------------------------------------- #
# pixel-box helpers
# --------------------------------------------------------------------------- #


def test_small_box_helpers():
    assert clip_box((-5, -3, 50, 70), 40, 60) == (0, 0, 40, 60)
    assert clip_box((10.7, 5.2, 20.1, 30.9), 40, 60) == (10, 5, 21, 31)
    x0, y0, x1, y1 = clip_box((100, 100, 200, 200), 40, 60)
    assert x1 - x0 == 0 and y1 - y0 == 0
    assert union_box([(0, 5, 10, 10), (3, 0, 4, 20)]) == (0, 0, 10, 20)
    with pytest.raises(ValueError):
        union_box([])
    assert box_center((0, 0, 10, 4)) == (5.0, 2.0)
    assert box_distance((0, 0, 2, 2), (3, 4, 5, 6)) == pytest.approx(5.0)
