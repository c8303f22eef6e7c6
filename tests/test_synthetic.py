"""Tests for focuslib.offline.synthetic: determinism, GT correctness, V*Bench round trip, odd aspect ratios."""
import json

import numpy as np
import pytest

from focuslib.offline.synthetic import (
    COLORS,
    INSTRUCTION,
    LETTERS,
    SHAPES,
    SyntheticItem,
    generate,
    make_item,
    read_vstar,
    render_crop_oracle,
    write_vstar,
)

SIZE = (800, 600)


@pytest.fixture(scope="module")
def items():
    return generate(6, seed=3, size=SIZE)


def _core_rgb(img, box, frac=0.2):
    """Mean RGB of the central `frac` of a box (shapes are solid there)."""
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    rx, ry = max(1, round(w * frac / 2)), max(1, round(h * frac / 2))
    arr = np.asarray(img, dtype=np.float32)
    return arr[round(cy) - ry : round(cy) + ry, round(cx) - rx : round(cx) + rx].reshape(-1, 3).mean(0)


def _colour_of(item: SyntheticItem, i: int) -> str:
    name = item.target_objects[i]
    if item.category == "direct_attributes":
        return item.options[LETTERS.index(item.label)]
    return name.split()[0]


def test_determinism():
    a, b, c = generate(2, seed=7, size=SIZE), generate(2, seed=7, size=SIZE), generate(2, seed=8, size=SIZE)
    for x, y in zip(a, b):
        assert x.text == y.text and x.bboxes == y.bboxes and x.label == y.label
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(c[0].image))
    # per-item generators: a shorter run is a prefix of a longer one
    assert generate(1, seed=7, size=SIZE)[0].text == a[0].text


def test_make_item_uses_only_given_rng():
    np.random.seed(0)
    x = make_item(np.random.default_rng(5), "direct_attributes", size=SIZE)
    np.random.seed(1)
    y = make_item(np.random.default_rng(5), "direct_attributes", size=SIZE)
    assert np.array_equal(np.asarray(x.image), np.asarray(y.image))


def test_categories_alternate_and_text_format(items):
    assert [it.category for it in items] == ["direct_attributes", "relative_position"] * 3
    for it in items:
        lines = it.text.split("\n")
        assert lines[0] == it.question and lines[-1] == INSTRUCTION
        assert lines[1:-1] == [f"({LETTERS[i]}) {o}" for i, o in enumerate(it.options)]
        assert len(it.options) == (4 if it.category == "direct_attributes" else 2)
        assert len(set(it.options)) == len(it.options)
        assert len(it.bboxes) == len(it.target_objects)
        for x, y, w, h in it.bboxes:
            assert 0 <= x and 0 <= y and x + w <= SIZE[0] and y + h <= SIZE[1] and 30 <= max(w, h) <= 80


def test_gt_boxes_hold_target_colour(items):
    for it in items:
        for i, box in enumerate(it.bboxes):
            want = np.array(COLORS[_colour_of(it, i)], dtype=np.float32)
            assert np.abs(_core_rgb(it.image, box) - want).max() < 1.0, (it.question_id, box)
        for d in it.distractors:  # the distractor metadata matches the pixels too
            assert np.abs(_core_rgb(it.image, d["bbox"]) - np.array(COLORS[d["color"]])).max() < 1.0


def test_direct_attributes_label_and_unique_shape(items):
    for it in (i for i in items if i.category == "direct_attributes"):
        shape = it.target_objects[0]
        assert shape in SHAPES and it.question == f"What is the color of the {shape}?"
        assert it.options[LETTERS.index(it.label)] in COLORS
        assert all(d["shape"] != shape for d in it.distractors)
        assert len(it.distractors) >= 1


def test_relative_position_label_matches_boxes(items):
    rel = [i for i in items if i.category == "relative_position"]
    labels = []
    for it in rel:
        (xa, _, wa, _), (xb, _, wb, _) = it.bboxes
        ca, cb = xa + wa / 2, xb + wb / 2
        assert abs(ca - cb) >= 0.25 * SIZE[0]
        assert it.options[LETTERS.index(it.label)] == ("left" if ca < cb else "right")
        a, b = it.target_objects
        assert it.question == f"Is the {a} on the left or right side of the {b}?"
        assert all((d["color"], d["shape"]) not in {tuple(a.split()), tuple(b.split())} for d in it.distractors)
        labels.append(it.label)
    # across seeds both letters occur (options really are shuffled)
    more = generate(16, seed=11, size=(400, 300), categories=("relative_position",), target_px=(20, 30))
    assert {i.label for i in more} == {"A", "B"}


def test_round_trip(items, tmp_path):
    path = write_vstar(items, tmp_path)
    write_vstar(items, tmp_path)  # idempotent
    lines = path.read_text().splitlines()
    assert len(lines) == len(items)
    for ln, it in zip(lines, items):
        rec = json.loads(ln)
        assert list(rec) == ["image", "text", "category", "question_id", "label"]
        assert rec["image"] == f"{it.category}/syn_{it.question_id}.jpg"
        meta = json.loads((tmp_path / rec["image"]).with_suffix(".json").read_text())
        assert meta["target_object"] == it.target_objects and meta["bbox"] == it.bboxes
        correct = it.options[LETTERS.index(it.label)]
        assert correct in meta["options"][0] and len(meta["options"]) == len(it.options)
    back = read_vstar(tmp_path)
    assert len(back) == len(items)
    for x, y in zip(items, back):
        for f in ("question_id", "text", "question", "options", "label", "category", "target_objects", "bboxes", "distractors"):
            assert getattr(x, f) == getattr(y, f), f
        assert y.image.mode == "RGB" and y.image.size == x.image.size
        # JPEG removes part of the fine noise: loose per pixel, tight once smoothed
        diff = np.abs(np.asarray(x.image, np.float32) - np.asarray(y.image, np.float32))
        assert diff.mean() < 8.0
        small = [np.asarray(im.reduce(8), np.float32) for im in (x.image, y.image)]
        assert np.abs(small[0] - small[1]).mean() < 1.5
        for i, box in enumerate(y.bboxes):  # colours survive JPEG
            want = np.array(COLORS[_colour_of(y, i)], dtype=np.float32)
            assert np.abs(_core_rgb(y.image, box) - want).max() < 25.0


@pytest.mark.parametrize("size", [(1200, 400), (400, 1200)])
def test_wide_and_tall(size):
    for it in generate(2, seed=1, size=size, target_px=(30, 50)):
        assert it.image.size == size
        for x, y, w, h in it.bboxes:
            assert x >= 0 and y >= 0 and x + w <= size[0] and y + h <= size[1]
        if it.category == "relative_position":
            (xa, _, wa, _), (xb, _, wb, _) = it.bboxes
            assert abs((xa + wa / 2) - (xb + wb / 2)) >= 0.25 * size[0]


def test_crop_oracle(items):
    it = items[1]
    crop = render_crop_oracle(it, margin=2.0)
    xs = [b[0] for b in it.bboxes] + [b[0] + b[2] for b in it.bboxes]
    ys = [b[1] for b in it.bboxes] + [b[1] + b[3] for b in it.bboxes]
    uw, uh = max(xs) - min(xs), max(ys) - min(ys)
    assert crop.width <= round(2 * uw) + 1 and crop.height <= round(2 * uh) + 1
    assert crop.width >= min(uw, SIZE[0]) and crop.height >= min(uh, SIZE[1])
    # margin 1.0 is the tight union box itself
    tight = render_crop_oracle(it, margin=1.0)
    assert tight.size == (uw, uh)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        make_item(rng, "OCR", size=SIZE)
    with pytest.raises(ValueError):
        make_item(rng, "direct_attributes", size=(100, 100))


def test_every_colour_option_is_in_the_image_unless_turned_off():
    """D38: the wrong options' colours are on distractors, so elimination by absent colours is impossible."""
    on = [i for i in generate(24, seed=3) if i.category == "direct_attributes"]
    for it in on:
        shown = {d["color"] for d in it.distractors} | {it.options[LETTERS.index(it.label)]}
        assert set(it.options) <= shown, it.question_id
        assert all(d["shape"] != it.target_objects[0] for d in it.distractors)
    off = [i for i in generate(24, seed=3, options_in_image=False) if i.category == "direct_attributes"]
    assert any(not set(it.options) <= {d["color"] for d in it.distractors} | {it.options[LETTERS.index(it.label)]}
               for it in off)


def test_pixel_noise_kinds():
    """'normal' is the benchmarks' stream, unchanged (the same deviates as before the 'bytes' kind existed);
    'bytes' is the same distribution discretized to 256 levels, and an unknown kind is named in the error."""
    from statistics import NormalDist

    from focuslib.offline import synthetic as S
    a = S._pixel_noise(np.random.default_rng(5), (60, 80, 3), "normal")
    ref = np.random.default_rng(5).normal(0.0, 6.0, size=(60, 80, 3)).astype(np.float32)
    assert a.dtype == np.float32 and np.array_equal(a, ref)
    b = S._pixel_noise(np.random.default_rng(5), (400, 500, 3), "bytes")
    assert b.dtype == np.float32 and b.shape == (400, 500, 3)
    assert len(np.unique(b)) == 256
    assert np.allclose(S._NOISE_TABLE, -S._NOISE_TABLE[::-1], atol=1e-5) and np.all(np.diff(S._NOISE_TABLE) > 0)
    assert abs(float(b.mean())) < 0.05 and abs(float(b.std()) - 6.0) < 0.1
    nd = NormalDist(0.0, 6.0)
    for x in (-9.0, -3.0, 0.5, 4.0, 10.0):   # the empirical CDF follows the normal one (discretization < 1/256)
        assert abs(float((b <= x).mean()) - nd.cdf(x)) < 0.006
    with pytest.raises(ValueError, match="uniform"):
        S._pixel_noise(np.random.default_rng(0), (2, 2, 3), "uniform")


def test_background_noise_kind():
    """The default background is the 'normal' one; 'bytes' gives another image (the generator's stream moves on
    differently, so the clutter differs too) of the same grey level."""
    from focuslib.offline import synthetic as S
    d = np.asarray(S._background(np.random.default_rng(2), (320, 240)))
    n = np.asarray(S._background(np.random.default_rng(2), (320, 240), "normal"))
    b = np.asarray(S._background(np.random.default_rng(2), (320, 240), "bytes"))
    assert np.array_equal(d, n) and not np.array_equal(n, b)
    assert abs(float(n.astype(float).mean()) - float(b.astype(float).mean())) < 3.0
