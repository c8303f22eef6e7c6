"""Bad input: clear errors naming the problem, or documented fallbacks (decisions.md D14)."""
import numpy as np
import pytest
from PIL import Image

from focuslib.core.config import preset
from focuslib.images import FocusInputError, load_image
from focuslib.core.search import Focus

Q = "What is the color of the umbrella?"


@pytest.fixture
def focus(tiny_llava):
    return Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=2))


def test_missing_file(focus, tmp_path):
    with pytest.raises(FocusInputError, match="not found: .*nope.jpg"):
        focus.answer(tmp_path / "nope.jpg", Q)


def test_corrupt_and_truncated_files(focus, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(FocusInputError, match="not a readable image file: .*junk.jpg"):
        focus.answer(junk, Q)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (400, 300), (1, 2, 3)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(FocusInputError, match="cut.jpg"):
        focus.answer(cut, Q)
    with pytest.raises(FocusInputError, match="directory"):
        focus.answer(tmp_path, Q)


def test_empty_question(focus):
    with pytest.raises(FocusInputError, match="question is empty"):
        focus.answer(Image.new("RGB", (50, 50)), "   ")


def test_one_pixel_image_is_answered(focus):
    tr = focus.answer(Image.new("RGB", (1, 1), (255, 0, 0)), Q)
    assert tr.answer is not None and tr.final_size[0] >= 1
    assert all(b[2] <= 1 and b[3] <= 1 for b in tr.chosen_boxes)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "I", "F", "1"])
def test_odd_modes_become_rgb(focus, tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode in ("I;16", "I"):
        img = Image.fromarray(rng.integers(0, 65535, (60, 80), dtype=np.uint16)).convert(mode)
    elif mode == "F":
        img = Image.fromarray(rng.random((60, 80)).astype(np.float32) * 1000)
    else:
        img = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).convert(mode)
    rgb = load_image(img)
    assert rgb.mode == "RGB" and rgb.size == (80, 60)
    # also through a file, as a user would pass it
    ext = "tiff" if mode in ("I;16", "I", "F", "CMYK") else "png"
    f = tmp_path / f"x.{ext}"
    img.save(f)
    assert load_image(f).mode == "RGB"
    assert focus.answer(f, Q).answer is not None


def test_16bit_is_rescaled_not_clipped():
    arr = np.full((10, 10), 65535, np.uint16)
    arr[:, :5] = 32768
    rgb = np.asarray(load_image(Image.fromarray(arr)))
    assert rgb[0, 9, 0] == 255 and 126 <= rgb[0, 0, 0] <= 129   # clipping would give 255 everywhere


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(img))[0, 0].tolist() == [255, 255, 255]


def test_question_without_target_answers_on_whole_image(focus):
    tr = focus.answer(Image.new("RGB", (300, 200), (9, 9, 9)), "Describe this.")
    assert tr.targets == [] and tr.final_mode == "whole" and tr.search_fp == 0
    assert tr.final_size == (300, 200)
    assert any("whole image" in n for n in tr.notes)
