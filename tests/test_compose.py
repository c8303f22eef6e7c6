"""Tests for focuslib.core.compose (step V's final input, A.5): merging boxes, ZoomEye's enlarge / near-merge,
the multi-ROI canvas."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from PIL import Image

from focuslib.core.compose import CANVAS_RESAMPLE, compose_canvas, enlarge_box, merge_near, merge_overlapping
from focuslib.core.rois import union_box

SEEDS = range(8)


def _overlap_area(a, b) -> int:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return iw * ih if iw > 0 and ih > 0 else 0


# --------------------------------------------------------------------------- #
# merging overlapping boxes
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "boxes,expected",
    [
        ([], []),
        ([(0, 0, 10, 10)], [(0, 0, 10, 10)]),
        # chain: A~B, B~C, A !~ C -> one box
        ([(0, 0, 10, 10), (18, 0, 30, 10), (8, 0, 20, 10)], [(0, 0, 30, 10)]),
        # touching edges/corners are not overlaps
        ([(10, 0, 20, 10), (0, 0, 10, 10), (10, 10, 20, 20)], [(0, 0, 10, 10), (10, 0, 20, 10), (10, 10, 20, 20)]),
        # the union of A,B overlaps C although neither A nor B does
        ([(0, 0, 10, 10), (5, 5, 20, 20), (15, 0, 25, 3)], [(0, 0, 25, 20)]),
        # containment + a far box; output sorted by (y0, x0)
        ([(50, 50, 60, 60), (2, 2, 4, 4), (0, 0, 10, 10), (40, 5, 45, 8)], [(0, 0, 10, 10), (40, 5, 45, 8), (50, 50, 60, 60)]),
    ],
)
def test_merge_overlapping(boxes, expected):
    assert merge_overlapping(boxes) == expected


@pytest.mark.parametrize("seed", SEEDS)
def test_merge_overlapping_random_invariants(seed):
    rng = random.Random(seed)
    boxes = []
    for _ in range(12):
        x0, y0 = rng.randrange(0, 90), rng.randrange(0, 90)
        boxes.append((x0, y0, x0 + rng.randrange(1, 20), y0 + rng.randrange(1, 20)))
    merged = merge_overlapping(boxes)
    for a, b in itertools.combinations(merged, 2):
        assert _overlap_area(a, b) == 0
    for b in boxes:  # every input is covered by exactly one output
        assert sum(m[0] <= b[0] and m[1] <= b[1] and b[2] <= m[2] and b[3] <= m[3] for m in merged) == 1
    assert merged == sorted(merged, key=lambda b: (b[1], b[0], b[3], b[2]))
    assert merge_overlapping(merged) == merged


# --------------------------------------------------------------------------- #
# compose_canvas
# --------------------------------------------------------------------------- #


def _noise_image(w, h, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def test_compose_canvas_hand_computed_layout():
    img = _noise_image(1000, 800)
    boxes = [(500, 400, 600, 500), (10, 10, 110, 60)]
    canvas, out = compose_canvas(img, boxes, gap=16)
    # x: [10,110) and [500,600) -> 100 + 16 + 100; y: [10,60) and [400,500) -> 50 + 16 + 100
    assert canvas.size == (216, 166)
    assert out == [(116, 66, 216, 166), (0, 0, 100, 50)]
    for src, dst in zip(boxes, out):
        assert np.array_equal(np.asarray(canvas.crop(dst)), np.asarray(img.crop(src)))


def test_compose_canvas_shared_axis_and_fill():
    # left half red, right half blue -> mean colour (127.5, 0, 127.5) -> (128, 0, 128)
    arr = np.zeros((100, 200, 3), dtype=np.uint8)
    arr[:, :100, 0] = 255
    arr[:, 100:, 2] = 255
    img = Image.fromarray(arr, "RGB")
    # side by side with overlapping y ranges: one y group, two x groups
    boxes = [(0, 10, 30, 50), (150, 30, 190, 80)]
    canvas, out = compose_canvas(img, boxes, gap=10)
    assert canvas.size == (30 + 10 + 40, 70)
    assert out == [(0, 0, 30, 40), (40, 20, 80, 70)]
    assert canvas.getpixel((35, 5)) == (128, 0, 128)  # gap pixel
    assert canvas.getpixel((5, 60)) == (128, 0, 128)  # below the first crop
    canvas, _ = compose_canvas(img, boxes, gap=10, fill=(1, 2, 3))
    assert canvas.getpixel((35, 5)) == (1, 2, 3)


def test_compose_canvas_touching_intervals_stay_adjacent():
    # x-intervals [0,10) and [10,20) touch: no empty space between them, so no gap is inserted
    img = _noise_image(100, 100)
    canvas, out = compose_canvas(img, [(0, 0, 10, 10), (10, 50, 20, 60)], gap=16)
    assert out == [(0, 0, 10, 10), (10, 26, 20, 36)]
    assert canvas.size == (20, 36)


def _random_disjoint_boxes(rng, W, H, n):
    boxes = []
    for _ in range(n):
        x0, y0 = rng.randrange(0, W - 10), rng.randrange(0, H - 10)
        boxes.append((x0, y0, min(W, x0 + rng.randrange(5, 80)), min(H, y0 + rng.randrange(5, 80))))
    return merge_overlapping(boxes)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_side", [None, 32])
def test_compose_canvas_order_and_no_overlap(seed, max_side):
    rng = random.Random(seed)
    img = _noise_image(400, 300, seed)
    boxes = _random_disjoint_boxes(rng, 400, 300, 6)
    rng.shuffle(boxes)
    canvas, out = compose_canvas(img, boxes, max_crop_side=max_side, gap=8)
    cw, ch = canvas.size
    assert len(out) == len(boxes)
    largest = max(max(b[2] - b[0], b[3] - b[1]) for b in boxes)
    s = 1.0 if max_side is None else min(1.0, max_side / largest)
    for src, dst in zip(boxes, out):
        assert 0 <= dst[0] < dst[2] <= cw and 0 <= dst[1] < dst[3] <= ch
        for i in (0, 1):  # scaled size, within rounding
            assert abs((dst[i + 2] - dst[i]) - s * (src[i + 2] - src[i])) <= 1.0
        if s == 1.0:
            assert np.array_equal(np.asarray(canvas.crop(dst)), np.asarray(img.crop(src)))
    if max_side is not None:
        assert max(max(d[2] - d[0], d[3] - d[1]) for d in out) <= max_side
    for (sa, da), (sb, db) in itertools.permutations(list(zip(boxes, out)), 2):
        if sa[2] <= sb[0]:  # a left of b
            assert da[2] <= db[0]
        if sa[3] <= sb[1]:  # a above b
            assert da[3] <= db[1]
        if s == 1.0:
            assert _overlap_area(da, db) == 0
    # empty space is dropped: the canvas is never larger than the union extent
    if s == 1.0:
        u = union_box(boxes)
        assert cw <= u[2] - u[0] + 8 * len(boxes) and ch <= u[3] - u[1] + 8 * len(boxes)


def test_compose_canvas_scaled_pixels():
    img = _noise_image(500, 400, 1)
    boxes = [(0, 0, 200, 100), (300, 200, 400, 400)]
    canvas, out = compose_canvas(img, boxes, max_crop_side=50, gap=4)
    # s = 50 / 200 = 0.25
    assert out == [(0, 0, 50, 25), (54, 29, 79, 79)]
    assert canvas.size == (79, 79)
    for src, dst in zip(boxes, out):
        ref = img.crop(src).resize((dst[2] - dst[0], dst[3] - dst[1]), CANVAS_RESAMPLE)
        assert np.array_equal(np.asarray(canvas.crop(dst)), np.asarray(ref))


def test_compose_canvas_clips_and_converts_mode():
    img = _noise_image(100, 80).convert("L")
    canvas, out = compose_canvas(img, [(-20, -20, 30, 30), (60, 50, 500, 500)], gap=0)
    assert canvas.mode == "RGB"
    assert out == [(0, 0, 30, 30), (30, 30, 70, 60)]
    assert np.array_equal(np.asarray(canvas.crop(out[1])), np.asarray(img.convert("RGB").crop((60, 50, 100, 80))))


def test_compose_canvas_bad_input():
    img = _noise_image(100, 80)
    with pytest.raises(ValueError, match="empty"):
        compose_canvas(img, [])
    with pytest.raises(ValueError, match=r"\(10, 10, 10, 50\)"):
        compose_canvas(img, [(0, 0, 5, 5), (10, 10, 10, 50)])
    with pytest.raises(ValueError, match=r"\(200, 10, 300, 50\)"):
        compose_canvas(img, [(200, 10, 300, 50)])  # outside the image -> zero area after clipping
    with pytest.raises(ValueError):
        compose_canvas(img, [(0, 0, 5, 5)], max_crop_side=0)
    with pytest.raises(ValueError):
        compose_canvas(img, [(0, 0, 5, 5)], gap=-1)


# --------------------------------------------------------------------------- #
# ZoomEye's final-input geometry: enlarge to the base side, merge near boxes
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("box,expected", [
    ((900, 500, 1000, 560), (782, 362, 1118, 698)),      # small box: 336 x 336 around its centre
    ((0, 0, 50, 50), (0, 0, 336, 336)),                  # at the corner: shifted in, not cut
    ((1950, 950, 2000, 1000), (1664, 664, 2000, 1000)),  # bottom-right corner
    ((100, 100, 700, 200), (100, 0, 700, 336)),          # wide box keeps its width; height 336, shifted in
])
def test_enlarge_box(box, expected):
    assert enlarge_box(box, 336, 2000, 1000) == expected
    x0, y0, x1, y1 = enlarge_box(box, 336, 2000, 1000)
    assert x1 - x0 >= 336 and y1 - y0 >= 336
    assert x0 <= box[0] and y0 <= box[1] and x1 >= box[2] and y1 >= box[3]


def test_enlarge_box_small_image_and_centre():
    assert enlarge_box((10, 10, 20, 20), 336, 300, 200) == (0, 0, 300, 200)  # image smaller than 336
    x0, y0, x1, y1 = enlarge_box((1000, 400, 1100, 440), 336, 4000, 3000)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == (1050, 420)


def test_merge_near_uses_a_50px_buffer_per_box():
    a = (0, 0, 100, 100)
    assert merge_near([a, (199, 0, 300, 100)], 50) == [(0, 0, 300, 100)]          # gap 99 < 2 x 50
    assert merge_near([a, (200, 0, 300, 100)], 50) == [a, (200, 0, 300, 100)]      # gap 100: kept apart
    assert merge_near([a, (150, 150, 250, 250)], 50) == [(0, 0, 250, 250)]         # diagonal gap 50
    # transitive: a chain of near boxes becomes one
    assert merge_near([a, (180, 0, 280, 100), (360, 0, 460, 100)], 50) == [(0, 0, 460, 100)]
    # buffer 0 is merge_overlapping
    boxes = [(0, 0, 10, 10), (10, 0, 20, 10), (5, 5, 15, 15)]
    assert merge_near(boxes, 0) == merge_overlapping(boxes)
    with pytest.raises(ValueError):
        merge_near(boxes, -1)
