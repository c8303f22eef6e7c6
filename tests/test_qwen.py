"""Qwen2.5-VL adapter on the tiny Qwen model (real processor settings, depth-0 vision tower = local tokens).

Layout by painting at two max-pixel settings and three aspects, cross-checked against the model's 3-D rope
ids; cached values = v_proj; FOCUS end to end with the interleaved final input; batched verification of
crops with different token counts; `focus ask`."""
import json

import pytest
import torch
from PIL import Image

from focuslib.core import compose as C
from focuslib.core.config import preset
from focuslib.eval.benchmarks import get_spec
from focuslib.models import EXISTENCE_PROMPT, QwenVLAdapter
from focuslib.core.search import Focus
from test_layout_llava import _inner, _paint
from test_onevision import _hot, _noise, _record_inputs, changed_cells, check_final_prompt
from test_search import Q, scripted

from _checks import assert_cache_is_projection

SMALL = 28 * 28 * 48   # second max-pixel setting: forces a real downscale of every test image


@pytest.fixture(scope="module")
def qwen_small(tiny_qwen):
    return QwenVLAdapter(tiny_qwen.model, tiny_qwen.processor, max_pixels=SMALL)


CASES = [((560, 560), None, (20, 20)), ((1000, 330), None, (12, 36)), ((330, 1000), None, (36, 12)),
         ((560, 560), SMALL, (6, 6)), ((1000, 330), SMALL, (3, 12)), ((330, 1000), SMALL, (12, 3))]


@pytest.mark.parametrize("size,maxpix,grid", CASES)
def test_painted_region_lands_on_its_cells(tiny_qwen, qwen_small, size, maxpix, grid):
    m = qwen_small if maxpix else tiny_qwen
    base = _noise(*size, seed=5)
    lay = m.grid_layout(base)
    assert lay.shape == grid and bool(lay.valid.all())
    h, w = grid
    picks = [[(0, 0)], [(h // 2, w // 2)], [(h - 1, w - 2)], [(1, w - 3), (1, w - 2), (2, w - 3), (2, w - 2)]]
    for cells in picks:
        boxes = torch.stack([lay.cell_boxes[r, c] for r, c in cells])
        region = (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max()))
        changed, _ = changed_cells(m, base, _paint(base, _inner(region, 0.3 / len(cells) ** 0.5)))
        expected = torch.zeros_like(changed)
        for r, c in cells:
            expected[r, c] = True
        assert torch.equal(changed, expected), (size, maxpix, cells, torch.nonzero(changed).tolist())


@pytest.mark.parametrize("size,maxpix,grid", CASES)
def test_cells_match_3d_rope_ids(tiny_qwen, qwen_small, size, maxpix, grid):
    m = qwen_small if maxpix else tiny_qwen
    img = Image.new("RGB", size)
    inputs = m.build_inputs([[img]], [m.prompt("x", 1)])
    lay = m.layout(img, inputs)
    rc = m.rope_cells(inputs, lay)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    assert torch.equal(rc[..., 0], rows) and torch.equal(rc[..., 1], cols)
    t, gh, gw = inputs["image_grid_thw"][0].tolist()
    assert (gh // 2, gw // 2) == grid and int((inputs["input_ids"] == m.image_token_id).sum()) == grid[0] * grid[1]
    # each cell is 28 resized px scaled back to the original image
    Wr, Hr = m.resized_size(size)
    torch.testing.assert_close(lay.cell_boxes[0, 0], torch.tensor([0, 0, 28 * size[0] / Wr, 28 * size[1] / Hr]))
    assert float(lay.cell_boxes[-1, -1, 2]) == pytest.approx(size[0]) and float(lay.cell_boxes[-1, -1, 3]) == pytest.approx(size[1])


def test_max_pixels_reaches_the_processor(tiny_qwen_path):
    from focuslib.models import load_mllm
    m = load_mllm(str(tiny_qwen_path), device="cpu", dtype="float32", max_pixels=SMALL)
    img = _noise(1000, 330)
    rp = m.relevance_pass(img, "dog")
    assert rp.layout.shape == (3, 12) and m.num_image_tokens(img.size) == 36
    with pytest.raises(ValueError):
        load_mllm(str(tiny_qwen_path), device="cpu", dtype="float32", min_pixels=10 ** 7, max_pixels=SMALL)


def test_cached_values_are_v_proj(tiny_qwen):
    img = _noise(600, 400)
    rp = tiny_qwen.relevance_pass(img, "red car", keys=True)
    inputs = tiny_qwen.build_inputs([[img]], [tiny_qwen.prompt(EXISTENCE_PROMPT.format(target="red car"), 1)])
    with torch.no_grad():
        out = tiny_qwen.model(**inputs, output_hidden_states=True, use_cache=True)
    vis = rp.layout.positions.flatten()
    assert tiny_qwen.tokenizer.convert_tokens_to_string(rp.target_tokens).strip() == "red car"
    assert int(rp.target_idx.min()) > int(vis.max())
    assert_cache_is_projection(tiny_qwen, rp, out.hidden_states)


def test_trace_fp_and_interleaved_final_input(tiny_qwen, monkeypatch):
    fake, state = scripted(tiny_qwen, {1})
    monkeypatch.setattr(tiny_qwen, "existence_logits", fake)
    seen = _record_inputs(tiny_qwen, monkeypatch)
    img = _noise(900, 600, seed=2)
    f = Focus(tiny_qwen, preset("qwen2.5-vl", n_steps=2, k=12))
    tr = f.answer(img, Q, targets=["red car"])
    t = tr.per_target[0]
    assert t.map.shape == t.layout.shape == tiny_qwen.grid_layout(img).pooled(2).shape    # preset: pooled 2x
    assert abs(float(t.map.sum()) - 1) < 1e-5
    assert len(t.verified) == 2 and t.best == 1 and tr.search_fp == 3 and state["batches"] == [2]
    assert tr.final_mode == "multi-image" and len(tr.final_images) == 2 and tr.final_images[0].size == img.size
    images, texts, inputs = [s for s in seen if len(s[0][0]) > 1][-1]
    assert texts[0].count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    expected = sum(tiny_qwen.num_image_tokens(im.size) for im in tr.final_images)
    assert int((inputs["input_ids"] == tiny_qwen.image_token_id).sum()) == expected
    assert inputs["image_grid_thw"].shape[0] == 2
    json.dumps(tr.summary())


def test_multi_target_and_type2(tiny_qwen, monkeypatch):
    img = Image.new("RGB", (1400, 560), (50, 50, 50))
    f = Focus(tiny_qwen, preset("qwen2.5-vl", n_steps=1, overrun=False), map_hook=_hot({"cat": (3, 3), "dog": (8, 20)}))
    tr = f.answer(img, "Is the cat on the left or right of the dog?", targets=["cat", "dog"])
    assert tr.final_mode == "multi-image" and len(tr.final_images) == 3 and tr.search_fp == 2
    assert tr.chosen_boxes == [C.enlarge_box(t.rois[t.best].box, 448, 1400, 560, 1.2) for t in tr.per_target]
    fake, _ = scripted(tiny_qwen, {0, 2})
    monkeypatch.setattr(tiny_qwen, "existence_logits", fake)
    f = Focus(tiny_qwen, preset("qwen2.5-vl", n_steps=2, k=6))
    tr = f.answer(_noise(1400, 1000, seed=4), "How many birds are in the image?", targets=["all birds"])
    t = tr.per_target[0]
    assert tr.qtype == 2 and len(t.verified) == len(t.rois) > 2 and t.selected == [0, 2]
    assert tr.search_fp == 1 + len(t.rois)
    assert tr.chosen_boxes == C.merge_near([C.enlarge_box(t.rois[i].box, 448, 1400, 1000, 1.2) for i in (0, 2)], 50)
    assert len(tr.final_images) == 1 + len(tr.chosen_boxes)


def test_final_prompt_captions_and_zoomeye_views(tiny_qwen, monkeypatch):
    """The same final prompt as OV (test_onevision.check_final_prompt) with Qwen's image tag and ZoomEye's
    448 px Qwen input side (decisions.md D10)."""
    check_final_prompt(tiny_qwen, "qwen2.5-vl", monkeypatch, "<|vision_start|><|image_pad|><|vision_end|>{}\n",
                       448, (1400, 800), one={"cat": (3, 3)}, far={"cat": (3, 3), "dog": (8, 20)},
                       near={"cat": (3, 3), "dog": (3, 6)})


def test_batched_verification_equals_one_by_one(tiny_qwen):
    img = _noise(1300, 900, seed=3)
    crops = [img.crop(b) for b in [(0, 0, 300, 300), (100, 50, 900, 250), (900, 100, 1300, 900),
                                   (10, 10, 60, 400), (500, 500, 501, 501)]]
    assert len({tiny_qwen.num_image_tokens(c.size) for c in crops}) >= 4
    batched = tiny_qwen.existence_logits(crops, "red car")
    single = torch.cat([tiny_qwen.existence_logits([c], "red car") for c in crops])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


def test_focus_ask_cli(tiny_qwen_path, tmp_path, capsys):
    from focuslib.cli import main
    img = tmp_path / "img.png"
    _noise(640, 480).save(img)
    rc = main(["ask", "--model", str(tiny_qwen_path), "--image", str(img), "--question",
               "What is the color of the kite?", "--n-steps", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "qwen2.5-vl" in out and "RANDOM weights" in out and "answer:" in out


# (W, H) of typical benchmark images (paper Tab. 8 averages; a 16:9 4K frame) -> merged grid at the real cap
REAL_GRIDS = {"vstar": ((2246, 1582), (56, 80)), "hrbench_4k": ((4024, 3503), (119, 137)),
              "hrbench_4k_16x9": ((3840, 2160), (77, 137)), "hrbench_8k": ((7431, 5358), (108, 150)),
              "mme_rw_lite": ((2836, 1566), (56, 101))}


def test_default_pixel_bounds_are_the_checkpoints(tiny_qwen, tiny_qwen_path):
    """Qwen2.5-VL-7B-Instruct's preprocessor_config.json: min_pixels 3136, max_pixels 12845056 (not
    28*28*1280 = 1003520, which gives V*Bench a 30 x 42 grid instead of 56 x 80)."""
    from focuslib.core.config import INPUTS
    assert (tiny_qwen.min_pixels, tiny_qwen.max_pixels) == (3136, 12845056) == tuple(INPUTS["qwen2.5-vl"].values())
    saved = json.loads((tiny_qwen_path / "processor_config.json").read_text())["image_processor"]["size"]
    assert (saved["shortest_edge"], saved["longest_edge"]) == (3136, 12845056)     # the tiny builder's default
    for size, grid in REAL_GRIDS.values():
        W, H = size
        Wr, Hr = tiny_qwen.resized_size(size)
        assert (Hr // 28, Wr // 28) == grid and tiny_qwen.num_image_tokens(size) == grid[0] * grid[1]
    assert tiny_qwen.num_image_tokens((2246, 1582)) == 4480 and tiny_qwen.num_image_tokens((7431, 5358)) == 16200
    # the processor agrees (size is passed on every call): a real HR-8K-sized image through the processor
    assert tiny_qwen.grid_layout(Image.new("RGB", (7431, 5358))).shape == (108, 150)


@pytest.mark.parametrize("bench", sorted(REAL_GRIDS))
def test_preset_crop_spans_1_to_2x_base_resolution(tiny_qwen, bench):
    """A.3: s_max such that the largest ROI spans ~1-2x the encoder's base resolution; for Qwen2.5-VL we take
    ZoomEye's 448 px Qwen input size. Checked on the real grid of each benchmark's typical image."""
    size, _ = REAL_GRIDS[bench]
    cfg = preset("qwen2.5-vl", get_spec(bench.rsplit("_16x9", 1)[0]).preset, n_steps=8)
    Wr, Hr = tiny_qwen.resized_size(size)
    cell = cfg.downsample * 28 * max(size[0] / Wr, size[1] / Hr)       # pooled cell side in original px
    assert 448 <= cfg.s_max * cell <= 2 * 448, (bench, cfg.s_max, cell)
    assert cfg.s_min * cell >= 56     # the smallest ROI is still a few merged patches wide


def test_cli_max_pixels_reaches_the_adapter(tiny_qwen_path, tmp_path, monkeypatch, capsys):
    from focuslib import cli
    from focuslib.cli import main
    seen = []
    real = cli.load_mllm
    monkeypatch.setattr(cli, "load_mllm", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    img = tmp_path / "img.png"
    _noise(1000, 330).save(img)
    assert main(["ask", "--model", str(tiny_qwen_path), "--image", str(img), "--question", "Is the kite red?",
                 "--targets", "kite", "--n-steps", "1", "--device", "cpu", "--max-pixels", str(SMALL)]) == 0
    assert seen[-1].max_pixels == SMALL and seen[-1].grid_layout(_noise(1000, 330)).shape == (3, 12)
