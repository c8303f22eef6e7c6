"""Step V's final input (paper A.5 "Final VQA prediction"): the chosen boxes -> the images the model answers on.

  enlarge_box        grow a crop to the encoder's base side (ZoomEye's get_patch, decisions.md D8 / D10)
  merge_near         merge boxes closer than a buffer (ZoomEye's merge_bbox_list); merge_overlapping = buffer 0
  compose_canvas     far-apart targets / type-2 on single-image models: crops pasted on a compact canvas
  highlight          multi-image models: the global view with every chosen box outlined
  final_captions     multi-image models: one caption after each image (D10)

Boxes are PixelBox = (x0, y0, x1, y1), half-open, original-image pixels (focuslib.core.rois).
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageStat

from focuslib.core.rois import clip_box, intersection_area, PixelBox, union_box

# Resampling filter used when compose_canvas downscales crops (anti-aliased).
CANVAS_RESAMPLE = Image.Resampling.LANCZOS


def enlarge_box(box: Sequence[int], min_side: int, width: int, height: int,
                scale: float | None = None) -> PixelBox:
    """Grow ``box`` around its centre so each side is at least ``min_side`` px (ZoomEye's ``get_patch``).

    Single-image models see every final crop resized to their encoder's base resolution, so a
    smaller crop would be upsampled; ZoomEye enlarges it to the base side first (decisions.md D8).
    ``scale`` then multiplies each side (ZoomEye's ``patch_scale``, 1.2 for its multi-image models:
    ``int(max(side, min_side) * scale)``, decisions.md D10). A side already longer is kept; the
    enlarged box is shifted (not cut) to stay inside the ``width x height`` image, and is cut only
    where the image itself is smaller.
    """
    def span(lo: int, hi: int, n: int) -> tuple[int, int]:
        size = max(hi - lo, min_side)
        size = min(int(size * scale) if scale is not None else size, n)
        start = (lo + hi) // 2 - size // 2
        start = min(max(start, 0), n - size)
        return start, start + size

    x0, x1 = span(int(box[0]), int(box[2]), width)
    y0, y1 = span(int(box[1]), int(box[3]), height)
    return (x0, y0, x1, y1)


def merge_near(boxes: Sequence[Sequence[int]], buffer: int) -> list[PixelBox]:
    """Merge boxes that come close, transitively, into their unions (ZoomEye's ``merge_bbox_list``).

    Two boxes merge when, each grown by ``buffer`` px on every side, they overlap with positive
    area -- i.e. when the gap between them is below ``2 * buffer`` on both axes. ``buffer=0`` is
    ``merge_overlapping``. The merged box is the union of the original (not the grown) boxes.

    Returns:
        Boxes sorted by (y0, x0, y1, x1), no two of them close.
    """
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0, got {buffer}")
    out: list[PixelBox] = [tuple(int(v) for v in b) for b in boxes]  # type: ignore[misc]

    def grown(b: PixelBox) -> tuple[int, int, int, int]:
        return (b[0] - buffer, b[1] - buffer, b[2] + buffer, b[3] + buffer)

    changed = True
    while changed:
        changed = False
        for i, j in itertools.combinations(range(len(out)), 2):
            if intersection_area(grown(out[i]), grown(out[j])) > 0:
                out[i] = union_box([out[i], out[j]])
                del out[j]
                changed = True
                break
    return sorted(out, key=lambda b: (b[1], b[0], b[3], b[2]))


def merge_overlapping(boxes: Sequence[Sequence[int]]) -> list[PixelBox]:
    """Merge boxes that overlap with positive area, transitively, into their unions.

    Boxes that merely touch (shared edge or corner) are not merged. A union can
    create new overlaps, so we iterate to a fixed point.

    Returns:
        Disjoint boxes sorted by (y0, x0) (then y1, x1 for determinism).
    """
    return merge_near(boxes, 0)


# --------------------------------------------------------------------------- #
# Canvas composition (A.5: paste ROIs onto an empty canvas by relative position)
# --------------------------------------------------------------------------- #


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # round-half-up: monotone and unsurprising


class _AxisLayout:
    """Maps one axis of the image onto the canvas.

    Intervals are merged into groups (overlapping *or touching* intervals join,
    since there is no empty space between them to drop); groups are laid out in
    order with ``gap`` px between them, each scaled by ``s``. Within a group the
    map is ``v -> offset + round(s * (v - g0))``, which is monotone, so
    order along the axis is preserved.
    """

    def __init__(self, intervals: list[tuple[int, int]], s: float, gap: int) -> None:
        groups: list[list[int]] = []
        for lo, hi in sorted(intervals):
            if groups and lo <= groups[-1][1]:
                groups[-1][1] = max(groups[-1][1], hi)
            else:
                groups.append([lo, hi])
        self.groups: list[tuple[int, int, int, int]] = []  # (g0, g1, offset, length)
        off = 0
        for g0, g1 in groups:
            length = max(1, _round(s * (g1 - g0)))
            self.groups.append((g0, g1, off, length))
            off += length + gap
        self.size = off - gap
        self.s = s

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Canvas [lo', hi') of the source interval [lo, hi) (at least 1 px)."""
        for g0, g1, off, length in self.groups:
            if g0 <= lo and hi <= g1:
                a = min(off + _round(self.s * (lo - g0)), off + length - 1)
                b = min(off + _round(self.s * (hi - g0)), off + length)
                return a, max(b, a + 1)
        raise AssertionError(f"interval {(lo, hi)} not covered by any group")  # unreachable


def compose_canvas(
    image: Image.Image,
    boxes: list[PixelBox],
    max_crop_side: int | None = None,
    gap: int = 16,
    fill: tuple[int, int, int] | None = None,
) -> tuple[Image.Image, list[PixelBox]]:
    """Paste crops of ``image`` onto a compact canvas, keeping their relative layout.

    Per axis, boxes are projected to intervals, overlapping/touching intervals
    are merged, and the merged intervals are laid out in order with ``gap`` px
    between consecutive ones -- i.e. empty space between crops is dropped but
    left/right and above/below relations are kept. All crops share one scale
    ``s = min(1, max_crop_side / largest crop side)`` (``s = 1`` if
    ``max_crop_side`` is None); ``gap`` is not scaled.

    Boxes that don't overlap in the image don't overlap on the canvas (except
    that a crop scaling to < 1 px is kept at 1 px and may then overlap a
    neighbour by 1 px). Boxes that do overlap are pasted in input order (later on top); merge them first
    with ``merge_overlapping`` if that matters.

    Args:
        image: source PIL image (any mode; the canvas is RGB).
        boxes: PixelBoxes in ``image`` coordinates; clipped to the image first.
        max_crop_side: optional cap on the largest crop side on the canvas.
        gap: px between consecutive merged intervals on each axis.
        fill: background RGB; defaults to the image's mean colour.

    Returns:
        (canvas, canvas_boxes) with ``canvas_boxes[i]`` the placement of ``boxes[i]``.

    Raises:
        ValueError: empty ``boxes``, a box with zero area after clipping,
            non-positive ``max_crop_side`` or negative ``gap``.
    """
    if len(boxes) == 0:
        raise ValueError("compose_canvas needs at least one box, got an empty list")
    if max_crop_side is not None and max_crop_side <= 0:
        raise ValueError(f"max_crop_side must be positive, got {max_crop_side}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    W, H = rgb.size
    clipped: list[PixelBox] = []
    for i, b in enumerate(boxes):
        cb = clip_box(b, W, H)
        if cb[2] <= cb[0] or cb[3] <= cb[1]:
            raise ValueError(f"box {i} {tuple(b)} has zero area after clipping to the {W}x{H} image: {cb}")
        clipped.append(cb)

    largest = max(max(b[2] - b[0], b[3] - b[1]) for b in clipped)
    s = 1.0 if max_crop_side is None else min(1.0, max_crop_side / largest)
    xs = _AxisLayout([(b[0], b[2]) for b in clipped], s, gap)
    ys = _AxisLayout([(b[1], b[3]) for b in clipped], s, gap)

    if fill is None:
        fill = tuple(_round(v) for v in ImageStat.Stat(rgb).mean[:3])  # type: ignore[assignment]
    canvas = Image.new("RGB", (xs.size, ys.size), fill)
    out: list[PixelBox] = []
    for b in clipped:
        cx0, cx1 = xs.span(b[0], b[2])
        cy0, cy1 = ys.span(b[1], b[3])
        crop = rgb.crop(b)
        if crop.size != (cx1 - cx0, cy1 - cy0):
            crop = crop.resize((cx1 - cx0, cy1 - cy0), CANVAS_RESAMPLE)
        canvas.paste(crop, (cx0, cy0))
        out.append((cx0, cy0, cx1, cy1))
    return canvas, out


# Captions of the multi-image final input (ours; the structure of ZoomEye's two-image prompt, decisions.md D10):
# the global view first, then each close-up, each caption right after its image.
GLOBAL_CAPTION = "This is the whole image; the {what} outlined in red."
CROP_CAPTION = "This is a close-up of {which}."


def final_captions(n_crops: int) -> list[str]:
    """Captions of [global view, crop 1, ..., crop n] (n >= 1), one per image, in image order."""
    one = n_crops == 1
    return ([GLOBAL_CAPTION.format(what="region of interest is" if one else "regions of interest are")]
            + [CROP_CAPTION.format(which="the outlined region" if one else "one of the outlined regions")] * n_crops)


def highlight(image: Image.Image, boxes, color=(255, 0, 0), width: int | None = None) -> Image.Image:
    """The global view with every chosen ROI outlined (final input of global-local models, A.5)."""
    out = image.copy()
    d = ImageDraw.Draw(out)
    width = width or max(2, round(max(image.size) / 200))
    for b in boxes:
        d.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], outline=color, width=width)
    return out
