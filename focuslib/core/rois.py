"""ROI proposal and box geometry for FOCUS (paper sec. 3.3, Algorithm in A.5).

Pipeline on an object relevance map ``A`` (float Tensor ``[h, w]``):

    anchors  = top_k_anchors(A, k, s_dist)           # spaced-out peaks
    rois     = [grow_roi(A, a, s_min, s_max, t) ...]  # symmetric, grown while denser than t x mean(A)
    ranked   = sort by A[anchor], then nms(...)       # diverse, ranked proposals

plus the geometry needed to move between the map's grid and the original image
(``grid_to_pixel`` / ``pixel_to_cells``) and box arithmetic (clip, union, centre, distance).
Step V's composition of the chosen boxes into the final input is focuslib.core.compose.

Conventions
    GridBox  = (r0, c0, r1, c1): half-open cell indices on the map.
    PixelBox = (x0, y0, x1, y1): half-open, original-image pixels.
    cell_boxes: Tensor ``[h, w, 4]`` with each cell's (x0, y0, x1, y1) in the
    original image; cells lying entirely in padding have zero area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args, Sequence

import torch

from focuslib.core.config import GrowthRule

GridBox = tuple[int, int, int, int]
PixelBox = tuple[int, int, int, int]
Cell = tuple[int, int]
GROWTH_RULES: tuple[str, ...] = get_args(GrowthRule)   # ("map-mean", "anchor"), decisions.md D4

__all__ = [
    "GridBox",
    "PixelBox",
    "Roi",
    "top_k_anchors",
    "symmetric_roi",
    "grow_roi",
    "box_iou",
    "intersection_area",
    "nms",
    "propose_rois",
    "grid_to_pixel",
    "pixel_to_cells",
    "clip_box",
    "union_box",
    "box_center",
    "box_distance",
    "GROWTH_RULES",
]


def _check_map(rel_map: torch.Tensor) -> None:
    if not isinstance(rel_map, torch.Tensor) or rel_map.dim() != 2:
        raise ValueError(f"rel_map must be a 2-D Tensor [h, w], got {getattr(rel_map, 'shape', type(rel_map))}")
    if rel_map.numel() == 0:
        raise ValueError(f"rel_map is empty: shape {tuple(rel_map.shape)}")


# --------------------------------------------------------------------------- #
# ROI proposal on the relevance map
# --------------------------------------------------------------------------- #


def top_k_anchors(
    rel_map: torch.Tensor,
    k: int,
    s_dist: float,
    valid: torch.Tensor | None = None,
) -> list[Cell]:
    """Greedy non-maximum selection of up to ``k`` anchor cells.

    Args:
        rel_map: float ``[h, w]`` relevance map.
        k: number of anchors to *accept* (fewer if the map runs out).
        s_dist: minimum Euclidean distance, in cells, between any two anchors
            (a distance exactly equal to ``s_dist`` is allowed).
        valid: optional bool ``[h, w]``; False cells are never anchors.

    Returns:
        ``[(row, col), ...]`` in descending relevance; ties are broken by
        row-major index so the result is deterministic.
    """
    _check_map(rel_map)
    h, w = rel_map.shape
    if k <= 0:
        return []
    flat = rel_map.detach().reshape(-1)
    ok = ~torch.isnan(flat)  # NaN cells can't be ranked, so they're never anchors
    if valid is not None:
        if tuple(valid.shape) != (h, w):
            raise ValueError(f"valid has shape {tuple(valid.shape)}, expected {(h, w)}")
        ok &= valid.reshape(-1).to(torch.bool)
    # stable descending sort -> equal scores keep row-major order
    order = torch.sort(flat, descending=True, stable=True).indices.tolist()
    ok_list = ok.tolist()
    min_d2 = float(s_dist) ** 2 if s_dist > 0 else 0.0  # compare squared: exact on ints
    anchors: list[Cell] = []
    for idx in order:
        if not ok_list[idx]:
            continue
        r, c = divmod(idx, w)
        if all((r - ar) ** 2 + (c - ac) ** 2 >= min_d2 for ar, ac in anchors):
            anchors.append((r, c))
            if len(anchors) == k:
                break
    return anchors


def _span(center: int, size: int, n: int) -> tuple[int, int]:
    """Half-open [lo, hi) of length min(size, n) around ``center``, shifted into [0, n)."""
    if size >= n:
        return 0, n
    lo = center - (size - 1) // 2  # even size: extra cell after the centre
    lo = min(max(lo, 0), n - size)  # shift, don't shrink
    return lo, lo + size


def symmetric_roi(anchor: Cell, size: int, h: int, w: int) -> GridBox:
    """``size x size`` grid box centred on ``anchor``, shifted to fit an ``h x w`` map.

    Odd sizes are exactly centred; even sizes put the extra cell on the
    bottom/right. Near a border the box is shifted (keeping its size); if
    ``size`` exceeds ``h`` (or ``w``) the box spans the whole map on that axis.

    Returns:
        (r0, c0, r1, c1), half-open, always containing ``anchor``.
    """
    if size < 1:
        raise ValueError(f"ROI size must be >= 1, got {size}")
    if h < 1 or w < 1:
        raise ValueError(f"map must be non-empty, got h={h}, w={w}")
    r, c = anchor
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"anchor {anchor} lies outside the {h}x{w} map")
    r0, r1 = _span(r, size, h)
    c0, c1 = _span(c, size, w)
    return (r0, c0, r1, c1)


def grow_roi(
    rel_map: torch.Tensor,
    anchor: Cell,
    s_min: int,
    s_max: int,
    t_expand: float,
    rule: GrowthRule = "map-mean",
    valid: torch.Tensor | None = None,
) -> GridBox:
    """Grow a symmetric ROI around ``anchor`` while it stays dense (decisions.md D4).

    Starts from ``symmetric_roi(anchor, s_min)`` (always accepted) and tries
    sizes ``s_min + 2, s_min + 4, ... <= s_max`` (one cell per side); growth
    stops at the first refusal. A grown box is accepted iff

    - ``rule="map-mean"`` (default, the paper's Tab. 12 behaviour):
      ``mean(rel_map[box cells that are valid]) >= t_expand * mean(rel_map[valid])``,
      i.e. the threshold is on the map rescaled to mean 1 ("denser than
      ``t_expand`` x uniform"), so around any real peak growth runs to s_max
      and t_expand only decides for boxes in the background;
    - ``rule="anchor"`` (the earlier reading, kept for the sensitivity study):
      ``mean(rel_map[box]) >= t_expand * rel_map[anchor]`` over all box cells.

    Args:
        rel_map: float ``[h, w]``.
        anchor: (row, col) inside the map.
        valid: optional bool ``[h, w]`` (False = padding); used by "map-mean" only.

    Returns:
        The last accepted GridBox.
    """
    _check_map(rel_map)
    if s_min > s_max:
        raise ValueError(f"s_min ({s_min}) must be <= s_max ({s_max})")
    if rule not in GROWTH_RULES:
        raise ValueError(f"unknown growth rule {rule!r}; known: {GROWTH_RULES}")
    h, w = rel_map.shape
    box = symmetric_roi(anchor, s_min, h, w)
    m = rel_map.detach().double()  # float64 so "== threshold" is not lost to rounding
    if rule == "anchor":
        ok = torch.ones_like(m, dtype=torch.bool)
        thresh = t_expand * float(m[anchor[0], anchor[1]])
    else:
        ok = torch.ones_like(m, dtype=torch.bool) if valid is None else valid.to(torch.bool)
        if tuple(ok.shape) != (h, w):
            raise ValueError(f"valid has shape {tuple(ok.shape)}, expected {(h, w)}")
        thresh = t_expand * float(m[ok].mean()) if bool(ok.any()) else 0.0

    def box_mean(b: GridBox) -> float:
        r0, c0, r1, c1 = b
        cells = ok[r0:r1, c0:c1]
        return float(m[r0:r1, c0:c1][cells].mean()) if bool(cells.any()) else 0.0

    size = s_min + 2
    while size <= s_max:
        grown = symmetric_roi(anchor, size, h, w)
        if grown == box:  # clamped to the full map on both axes: nothing left to grow
            break
        if box_mean(grown) < thresh:
            break
        box = grown
        size += 2
    return box


def _area(b: Sequence[float]) -> float:
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])


def intersection_area(a: Sequence[float], b: Sequence[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return iw * ih if iw > 0 and ih > 0 else 0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two half-open boxes (GridBox or PixelBox; same formula). 0.0 if the union is empty."""
    inter = intersection_area(a, b)
    union = _area(a) + _area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def nms(
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float] | torch.Tensor,
    iou_threshold: float,
) -> list[int]:
    """Greedy non-maximum suppression.

    Visits boxes by descending score (stable: equal scores keep input order)
    and keeps a box unless its IoU with an already-kept box is ``> iou_threshold``.

    Returns:
        Kept indices into ``boxes``, in descending score order.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().reshape(-1).tolist()
    if len(boxes) != len(scores):
        raise ValueError(f"got {len(boxes)} boxes but {len(scores)} scores")
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])  # sorted() is stable
    keep: list[int] = []
    for i in order:
        if all(box_iou(boxes[i], boxes[j]) <= iou_threshold for j in keep):
            keep.append(i)
    return keep


@dataclass(frozen=True)
class Roi:
    """A proposed region of interest on the relevance map.

    grid: (r0, c0, r1, c1) half-open cell box.
    anchor: (row, col) peak the box was grown from.
    score: relevance at the anchor (the paper's ranking key).
    """

    grid: GridBox
    anchor: Cell
    score: float


def propose_rois(
    rel_map: torch.Tensor,
    k: int,
    s_min: int,
    s_max: int,
    s_dist: float,
    t_expand: float,
    nms_threshold: float,
    valid: torch.Tensor | None = None,
    growth_rule: GrowthRule = "map-mean",
) -> list[Roi]:
    """Full ROI proposal: anchors -> grow -> rank by anchor relevance -> NMS.

    Args:
        rel_map: float ``[h, w]``.
        valid: optional bool ``[h, w]`` restricting where anchors may lie
            (e.g. to exclude padding cells); also the cells growth averages over.
        growth_rule: "map-mean" (default) or "anchor", see ``grow_roi``.

    Returns:
        Surviving ROIs, ranked by descending anchor relevance.
    """
    anchors = top_k_anchors(rel_map, k, s_dist, valid)
    rois = [
        Roi(grid=grow_roi(rel_map, a, s_min, s_max, t_expand, growth_rule, valid),
            anchor=a, score=float(rel_map[a[0], a[1]]))
        for a in anchors
    ]
    # nms visits (and returns) boxes by descending score -> this is the ranking step
    keep = nms([r.grid for r in rois], [r.score for r in rois], nms_threshold)
    return [rois[i] for i in keep]


# --------------------------------------------------------------------------- #
# Grid <-> pixel geometry
# --------------------------------------------------------------------------- #


def _check_cells(cell_boxes: torch.Tensor) -> None:
    if cell_boxes.dim() != 3 or cell_boxes.shape[-1] != 4:
        raise ValueError(f"cell_boxes must be [h, w, 4], got {tuple(cell_boxes.shape)}")


def grid_to_pixel(box: GridBox, cell_boxes: torch.Tensor) -> PixelBox | None:
    """Pixel extent of a grid box: union of its non-padding cells' pixel boxes.

    Args:
        box: (r0, c0, r1, c1) on the grid of ``cell_boxes``.
        cell_boxes: ``[h, w, 4]`` cell boxes (x0, y0, x1, y1) in image pixels.

    Returns:
        (x0, y0, x1, y1) rounded outward (floor x0/y0, ceil x1/y1), or None
        if every cell in ``box`` is padding (zero area) or ``box`` is empty.
    """
    _check_cells(cell_boxes)
    r0, c0, r1, c1 = box
    cells = cell_boxes[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)].reshape(-1, 4).double()
    real = (cells[:, 2] > cells[:, 0]) & (cells[:, 3] > cells[:, 1])
    if not bool(real.any()):
        return None
    cells = cells[real]
    return (
        math.floor(float(cells[:, 0].min())),
        math.floor(float(cells[:, 1].min())),
        math.ceil(float(cells[:, 2].max())),
        math.ceil(float(cells[:, 3].max())),
    )


def pixel_to_cells(box: PixelBox, cell_boxes: torch.Tensor) -> torch.Tensor:
    """Cells whose pixel box overlaps ``box`` with positive area.

    Args:
        box: (x0, y0, x1, y1) in image pixels.
        cell_boxes: ``[h, w, 4]``.

    Returns:
        bool ``[h, w]``; padding cells (zero area) are always False.
    """
    _check_cells(cell_boxes)
    cb = cell_boxes.double()
    x0, y0, x1, y1 = (float(v) for v in box)
    iw = torch.minimum(cb[..., 2], torch.tensor(x1)) - torch.maximum(cb[..., 0], torch.tensor(x0))
    ih = torch.minimum(cb[..., 3], torch.tensor(y1)) - torch.maximum(cb[..., 1], torch.tensor(y0))
    return (iw > 0) & (ih > 0)


# --------------------------------------------------------------------------- #
# Pixel-box helpers
# --------------------------------------------------------------------------- #


def clip_box(box: Sequence[float], width: int, height: int) -> PixelBox:
    """Clip ``box`` to the image ``[0, width) x [0, height)``.

    Float coordinates are rounded outward first (floor x0/y0, ceil x1/y1).
    A box entirely outside the image comes back with zero area.
    """
    x0, y0, x1, y1 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    return (x0, y0, x1, y1)


def union_box(boxes: Sequence[Sequence[int]]) -> PixelBox:
    """Smallest box containing all ``boxes`` (non-empty sequence)."""
    if len(boxes) == 0:
        raise ValueError("union_box needs at least one box")
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def box_center(box: Sequence[float]) -> tuple[float, float]:
    """(cx, cy) of a PixelBox (for a GridBox this reads (c_r, c_c))."""
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)


def box_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between box centres (compared against t_obj_dist in A.5)."""
    (ax, ay), (bx, by) = box_center(a), box_center(b)
    return math.hypot(ax - bx, ay - by)
