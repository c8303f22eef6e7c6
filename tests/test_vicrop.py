"""ViCrop: refuses non-eager attention, reads the right attention row, the crop covers planted attention
(whole image and stitched -high tiles, rel-att's division cancels what the generic prompt also attends),
and rel-att / grad-att run on the tiny LLaVA in eager mode with the paper's FP count."""
import pytest
import torch
from PIL import Image

from focuslib.baselines import make_baseline
from focuslib.baselines.vicrop import (GENERIC_PROMPT, AttentionImplementationError, ViCrop, attn_implementation,
                                       best_window, ensure_eager, tiles, vicrop_preset)
from focuslib.models import load_mllm
from focuslib.runner import evaluate
import numpy as np

W, H = 1024, 768


def coord_image(w=W, h=H) -> Image.Image:
    """Each pixel encodes its own position, so a crop / tile tells where it came from."""
    x = np.arange(w)[None, :].repeat(h, 0)
    y = np.arange(h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x % 256, y % 256, (x // 256) * 16 + (y // 256)], -1).astype(np.uint8))


def decode(im: Image.Image) -> tuple[int, int, int, int]:
    r, g, b = im.getpixel((0, 0))
    x0, y0 = (b // 16) * 256 + r, (b % 16) * 256 + g
    return (x0, y0, x0 + im.width, y0 + im.height)

TARGET = (700, 520, 760, 580)   # the object the question asks about
DECOY = (100, 100, 160, 160)    # salient for any prompt (the generic one too)


@pytest.fixture(scope="module")
def eager_llava(tiny_llava_path):
    return load_mllm(str(tiny_llava_path), device="cpu", dtype="float32", attn_implementation="eager")


def _overlaps(cell, region):
    return cell[0] < region[2] and cell[2] > region[0] and cell[1] < region[3] and cell[3] > region[1]


def planted_token_map(self, image, text, grad=False):
    """Attention planted on the cells over TARGET (question only) and DECOY (question and generic prompt)."""
    layout = self.mllm.grid_layout(image)
    ox, oy = decode(image)[:2]  # where this image (whole or tile) sits in the full coordinate image
    vals = torch.ones(layout.shape)
    for r in range(layout.shape[0]):
        for c in range(layout.shape[1]):
            b = layout.cell_boxes[r, c].tolist()
            b = (b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy)
            if _overlaps(b, DECOY):
                vals[r, c] = 50.0
            if text != GENERIC_PROMPT and _overlaps(b, TARGET):
                vals[r, c] = 20.0
    self.mllm.calls["vicrop_attention"] += 1
    return vals * layout.valid, layout


def test_refuses_sdpa_and_says_how_to_fix(tiny_llava, tmp_path):
    assert attn_implementation(tiny_llava.model) == "sdpa"
    with pytest.raises(AttentionImplementationError, match="eager"):
        ViCrop(tiny_llava)
    with pytest.raises(AttentionImplementationError, match="attn_implementation='eager'"):
        make_baseline(tiny_llava, "vicrop-grad")
    with pytest.raises(AttentionImplementationError):  # the runner refuses before writing any record
        evaluate(tiny_llava, "vstar", "vicrop-rel", samples=[], out_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.jsonl"))


def test_ensure_eager_switches_a_loaded_model(tiny_llava_path):
    m = load_mllm(str(tiny_llava_path), device="cpu", dtype="float32")
    assert ensure_eager(m) is m and attn_implementation(m.model) == "eager"
    ViCrop(m)  # no error now


@pytest.mark.parametrize("high,n_tiles", [(False, 1), (True, 4)])
def test_crop_covers_the_planted_attention(eager_llava, monkeypatch, high, n_tiles):
    monkeypatch.setattr(ViCrop, "token_map", planted_token_map)
    v = ViCrop(eager_llava, vicrop_preset(eager_llava.family, variant="rel", high=high, tile=512))
    tr = v.answer(coord_image(), "What is the color of the umbrella?")
    (box,) = tr.chosen_boxes
    assert box[0] <= TARGET[0] and box[1] <= TARGET[1] and box[2] >= TARGET[2] and box[3] >= TARGET[3]
    assert not _overlaps(box, DECOY)  # rel-att: the generic prompt's attention divides the decoy away
    assert box[2] - box[0] == 336 and box[3] - box[1] == 336  # the smallest window holds it all
    assert tr.search_fp == 2 * n_tiles and len(tr.extra["tiles"]) == n_tiles
    assert len(tr.final_images) == 2 and tr.final_images[0].size == (W, H)  # full image + crop
    assert decode(tr.final_images[1]) == tuple(box)


def test_without_the_generic_division_the_decoy_wins(eager_llava, monkeypatch):
    monkeypatch.setattr(ViCrop, "token_map", planted_token_map)
    v = ViCrop(eager_llava, vicrop_preset(eager_llava.family, variant="grad", high=False))
    tr = v.answer(coord_image(), "What is the color of the umbrella?")
    assert _overlaps(tr.chosen_boxes[0], DECOY) and tr.search_fp == 1


def test_tiles_and_window():
    assert tiles((2246, 1582), 1024) == [(0, 0, 749, 791), (749, 0, 1497, 791), (1497, 0, 2246, 791),
                                         (0, 791, 749, 1582), (749, 791, 1497, 1582), (1497, 791, 2246, 1582)]
    assert tiles((800, 600), 1024) == [(0, 0, 800, 600)]
    d = torch.zeros(100, 100, dtype=torch.float64)
    d[80, 10] = 1.0
    box, score = best_window(d, 0.1, (1000, 1000), [200, 400], 0.125)
    assert box[0] <= 100 < box[2] and box[1] <= 800 < box[3] and box[2] - box[0] == 200 and score > 0.9


def test_attention_row_matches_output_attentions(eager_llava):
    img = Image.new("RGB", (200, 150), (120, 30, 60))
    v = ViCrop(eager_llava, vicrop_preset(eager_llava.family, variant="rel", high=False))
    vals, lay = v.token_map(img, "Is the sign red?")
    m = eager_llava
    inputs = m.build_inputs([[img]], [m.prompt("Is the sign red?", 1)])
    with torch.no_grad():
        out = m.model(**m._to_device(inputs), output_attentions=True)
    layer = v.config.resolved_layer(m.num_layers)
    ref = out.attentions[layer][0, :, -1, :].mean(0)[lay.positions.flatten()].view(lay.shape) * lay.valid
    assert layer == round(14 * m.num_layers / 32)
    assert torch.allclose(vals, ref, atol=1e-6) and vals.sum() > 0


@pytest.mark.parametrize("variant,fp", [("grad", 1), ("rel", 2)])
def test_runs_on_tiny_llava_in_eager_mode(eager_llava, variant, fp):
    img = Image.new("RGB", (320, 240), (20, 160, 90))
    v = ViCrop(eager_llava, vicrop_preset(eager_llava.family, variant=variant, high=True))
    tr = v.answer(img, "What is the color of the car?\n(A) red\n(B) green")
    assert tr.search_fp == fp and tr.model_calls["vicrop_attention"] == fp and tr.model_calls["answer"] == 1
    assert isinstance(tr.answer, str) and tr.method == f"vicrop-{variant}-high"
    x0, y0, x1, y1 = tr.chosen_boxes[0]
    assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
    if variant == "grad":
        vals, _ = v.token_map(img, "What is the color of the car?", grad=True)
        assert torch.isfinite(vals).all() and (vals >= 0).all() and vals.sum() > 0
