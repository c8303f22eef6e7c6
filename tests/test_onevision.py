"""LLaVA-OneVision adapter on the tiny OV model (real processor settings, local vision features).

Layout by painting (anyres tiles, unpadding, anyres_max_9 downsizing), cached values = v_proj, FOCUS end to
end (trace, FP accounting, type-1 / multi-target / type-2, interleaved final input and its token count),
batched verification of crops with different token counts, and `focus ask`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from focuslib.core import compose as C
from focuslib.core import rois as R
from focuslib.core.config import preset
from focuslib.models import EXISTENCE_PROMPT, OneVisionAdapter
from focuslib.core.search import Focus
from test_layout_llava import _inner, _paint   # same painting helpers as LLaVA-1.5
from test_search import Q, scripted

from _checks import assert_cache_is_projection


class _Stop(Exception):
    pass


def llm_input_embeds(mllm, image):
    """The LLM's input embeddings for the existence prompt on `image` (the LLM itself is not run)."""
    got = {}

    def grab(m, a, kw):
        got["e"] = kw["inputs_embeds"][0].detach()
        raise _Stop
    h = mllm.model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    inputs = mllm.build_inputs([[image]], [mllm.prompt(EXISTENCE_PROMPT.format(target="dog"), 1)])
    try:
        with torch.no_grad():
            mllm.model(**inputs)
    except _Stop:
        pass
    finally:
        h.remove()
    return got["e"], mllm.layout(image, inputs)


def changed_cells(mllm, base, painted, cache={}):
    key = (id(mllm), id(base))
    if key not in cache:
        cache.clear()
        cache[key] = (base, llm_input_embeds(mllm, base))
    e0, lay = cache[key][1]
    e1, lay1 = llm_input_embeds(mllm, painted)
    assert torch.equal(lay.positions, lay1.positions)
    return (e0 - e1).abs().amax(-1)[lay.positions] > 1e-5, lay


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


# ---- 1. layout by painting ---------------------------------------------------------------------------
CASES = {  # size: (tiles, unpadded grid, local grid, downsized)
    (500, 500): ((2, 2), (54, 54), (54, 54), False),      # square, 2 x 2 tiles, nothing cut
    (1000, 300): ((1, 3), (25, 81), (25, 81), False),     # wide 3.3:1 -> 1 x 3 tiles, 1 row unpadded each side
    (300, 1000): ((3, 1), (81, 25), (81, 25), False),     # tall 1:3.3 -> 3 x 1 tiles, columns unpadded
    (1200, 1200): ((4, 4), (108, 108), (81, 81), True),   # 16 tiles > anyres_max_9 * 1.1 -> bilinear 81 x 81
    (2400, 800): ((2, 6), (54, 162), (46, 140), True),    # wide 3:1, downsized
    (800, 2400): ((6, 2), (162, 54), (140, 46), True),    # tall 1:3, downsized
}


@pytest.mark.parametrize("size", list(CASES))
def test_grid_geometry_matches_processor(tiny_ov, size):
    tiles, unpadded, grid, down = CASES[size]
    shape, ys, xs, info = tiny_ov.local_grid(size)
    assert info["tiles"] == tiles and info["unpadded"] == unpadded and tuple(shape) == grid
    assert info["downsized"] == down
    lay = tiny_ov.grid_layout(Image.new("RGB", size))
    assert lay.shape == grid
    # the processor's expansion of <image> is exactly base view + local grid + one newline per row
    text = tiny_ov.prompt("x", 1)
    n = int((tiny_ov.build_inputs([[Image.new("RGB", size)]], [text])["input_ids"] == tiny_ov.image_token_id).sum())
    assert n == 729 + grid[0] * (grid[1] + 1) == tiny_ov.num_image_tokens(size)
    # cells tile the image, monotone; unpadding works in whole patches, so at most a fraction of a cell
    # at a border is seen by no local token (1000 x 300: y in [299.13, 300))
    assert (xs[1:] >= xs[:-1]).all() and (ys[1:] >= ys[:-1]).all()
    for e, n, full in [(xs, shape[1], size[0]), (ys, shape[0], size[1])]:
        cell = full / n
        assert 0 <= float(e[0]) < cell and full - cell < float(e[-1]) <= full


def _picks(lay):
    rows, cols = torch.nonzero(lay.valid, as_tuple=True)
    r_lo, r_hi, c_lo, c_hi = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    return [[(r_lo + 1, c_lo + 1)], [((r_lo + r_hi) // 2, (c_lo + c_hi) // 2)], [(r_hi - 1, c_hi - 2)],
            [(r_lo + 3, c_hi - 5), (r_lo + 3, c_hi - 4), (r_lo + 4, c_hi - 5), (r_lo + 4, c_hi - 4)]]


@pytest.mark.parametrize("size", [s for s, c in CASES.items() if not c[3]])
def test_painted_region_lands_on_its_cells(tiny_ov, size):
    base = _noise(*size, seed=1)
    lay = tiny_ov.grid_layout(base)
    for cells in _picks(lay):
        boxes = torch.stack([lay.cell_boxes[r, c] for r, c in cells])
        region = (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max()))
        changed, lay2 = changed_cells(tiny_ov, base, _paint(base, _inner(region, 0.3 / len(cells) ** 0.5)))
        assert torch.equal(lay2.positions, lay.positions)
        expected = torch.zeros_like(changed)
        for r, c in cells:
            expected[r, c] = True
        assert torch.equal(changed, expected), (size, cells, torch.nonzero(changed).tolist())


@pytest.mark.parametrize("size", [s for s, c in CASES.items() if c[3]])
def test_painted_region_downsized_grid(tiny_ov, size):
    """anyres_max_9 shrinks the canvas bilinearly, mixing neighbours: the changed cells must lie within the
    cells overlapping the painted box dilated by one cell, and include the cell at its centre."""
    base = Image.new("RGB", size, (90, 120, 60))
    lay = tiny_ov.grid_layout(base)
    h, w = lay.shape
    for r, c in [(2, 3), (h // 2, w // 2), (h - 3, w - 4)]:
        x0, y0, x1, y1 = (float(v) for v in lay.cell_boxes[r, c])
        changed, _ = changed_cells(tiny_ov, base, _paint(base, _inner((x0, y0, x1, y1), 0.25)))
        b = lay.cell_boxes
        overlap = (b[..., 0] < x1) & (b[..., 2] > x0) & (b[..., 1] < y1) & (b[..., 3] > y0)
        dil = torch.nn.functional.max_pool2d(overlap[None, None].float(), 3, 1, 1)[0, 0].bool()
        assert changed[r, c], (size, (r, c))
        assert not (changed & ~dil).any(), (size, (r, c), torch.nonzero(changed).tolist())
        assert changed.sum() <= 9


def test_newline_and_base_tokens_are_not_in_the_grid(tiny_ov):
    img = Image.new("RGB", (1000, 300))
    inputs = tiny_ov.build_inputs([[img]], [tiny_ov.prompt("x", 1)])
    lay = tiny_ov.layout(img, inputs)
    pos = torch.nonzero(inputs["input_ids"][0] == tiny_ov.image_token_id).flatten()
    h, w = lay.shape
    assert torch.equal(lay.positions.flatten(), pos[729:].view(h, w + 1)[:, :w].flatten())
    assert int(lay.positions.min()) == int(pos[729])           # base view (first 729) excluded
    assert not set(pos[729:].view(h, w + 1)[:, w].tolist()) & set(lay.positions.flatten().tolist())


def test_settings_reach_the_processor_and_the_model(tiny_ov_path):
    from focuslib.models import load_mllm
    m = load_mllm(str(tiny_ov_path), device="cpu", dtype="float32", vision_aspect_ratio="anyres_max_4")
    assert m.processor.vision_aspect_ratio == m.model.config.vision_aspect_ratio == "anyres_max_4"
    img = Image.new("RGB", (900, 900))      # 3 x 3 tiles = 81 x 81 > 4 * 1.1 -> 54 x 54
    assert m.grid_layout(img).shape == (54, 54)
    rp = m.relevance_pass(img, "dog")       # the model's features must match the processor's count
    assert rp.layout.shape == (54, 54)
    m2 = load_mllm(str(tiny_ov_path), device="cpu", dtype="float32", image_grid_pinpoints=[[384, 384]])
    assert m2.grid_layout(img).shape == (27, 27) and m2.relevance_pass(img, "dog").layout.shape == (27, 27)


# ---- 2. cached values ------------------------------------------------------------------------------
def test_cached_values_are_v_proj(tiny_ov):
    img = _noise(600, 400)
    rp = tiny_ov.relevance_pass(img, "red car", keys=True)
    inputs = tiny_ov.build_inputs([[img]], [tiny_ov.prompt(EXISTENCE_PROMPT.format(target="red car"), 1)])
    with torch.no_grad():
        out = tiny_ov.model(**inputs, output_hidden_states=True, use_cache=True)
    assert tiny_ov.tokenizer.convert_tokens_to_string(rp.target_tokens).strip() == "red car"
    assert_cache_is_projection(tiny_ov, rp, out.hidden_states)


# ---- 3. end to end ---------------------------------------------------------------------------------
def _record_inputs(mllm, monkeypatch):
    seen = []
    real = mllm.build_inputs

    def spy(images, texts, **kw):
        out = real(images, texts, **kw)
        seen.append((images, texts, out))
        return out
    monkeypatch.setattr(mllm, "build_inputs", spy)
    return seen


def test_trace_fp_and_interleaved_final_input(tiny_ov, monkeypatch):
    fake, state = scripted(tiny_ov, {2})
    monkeypatch.setattr(tiny_ov, "existence_logits", fake)
    seen = _record_inputs(tiny_ov, monkeypatch)
    f = Focus(tiny_ov, preset("llava-onevision", "vstar", n_steps=2, k=12))
    img = _noise(700, 500, seed=2)
    tr = f.answer(img, Q, targets=["red car"])
    t = tr.per_target[0]
    lay = tiny_ov.grid_layout(img)
    assert t.layout.shape == t.map.shape == (-(-lay.shape[0] // 2), -(-lay.shape[1] // 2))   # 2x2 pooled
    assert abs(float(t.map.sum()) - 1) < 1e-5 and float(t.map[~t.layout.valid].sum()) == 0
    assert len(t.verified) == 3 and t.best == 2                  # batch of 2 says No, overrun finds #2
    assert tr.search_fp == 1 + 3 and tr.model_calls["verify_crops"] == 3 and tr.model_calls["relevance"] == 1
    assert state["batches"] == [2, 1]
    assert all(0 <= r.box[0] < r.box[2] <= 700 and 0 <= r.box[1] < r.box[3] <= 500 for r in t.rois)
    # final input: global view with the box outlined + the crop (enlarged as ZoomEye's, D10), EACH anyres-tiled
    # (default, transformers 4.46)
    assert tr.final_mode == "multi-image" and len(tr.final_images) == 2
    box = C.enlarge_box(t.rois[2].box, 384, 700, 500, 1.2)
    assert tr.chosen_boxes == [box] and tr.final_images[0].size == img.size
    assert tr.final_images[1].size == (box[2] - box[0], box[3] - box[1])
    images, texts, inputs = [s for s in seen if len(s[0][0]) > 1][-1]   # the final answer's input
    assert len(images) == 1 and len(images[0]) == 2 and texts[0].count("<image>") == 2
    want = sum(tiny_ov.num_image_tokens(im.size) for im in tr.final_images)
    assert int((inputs["input_ids"] == tiny_ov.image_token_id).sum()) == want > 2 * 730
    assert inputs["pixel_values"].shape[1] > 1 and inputs["batch_num_images"].tolist() == [1, 1]
    json.dumps(tr.summary())


def test_interleave_anyres_is_the_default_native_an_option(tiny_ov):
    g, c = Image.new("RGB", (700, 500)), Image.new("RGB", (200, 120))
    assert tiny_ov.interleave == "anyres"
    m = OneVisionAdapter(tiny_ov.model, tiny_ov.processor, interleave="native")
    text = m.prompt("What?", 2)
    n = int((tiny_ov.build_inputs([[g, c]], [text])["input_ids"] == m.image_token_id).sum())
    assert n == m.num_image_tokens(g.size) + m.num_image_tokens(c.size) == tiny_ov.final_input_tokens([g.size, c.size])
    assert n > 2 * 730
    assert isinstance(tiny_ov.generate([g, c], "What?", max_new_tokens=2), str)   # the model takes the flat form
    native = int((m.build_inputs([[g, c]], [text])["input_ids"] == m.image_token_id).sum())
    assert native == 2 * m.num_image_tokens(g.size, multi=True) == m.final_input_tokens([g.size, c.size]) == 1460
    assert isinstance(m.generate([g, c], "What?", max_new_tokens=2), str)
    # a batch of multi-image prompts: each prompt's images tiled, consumed in placeholder order
    inputs = tiny_ov.build_inputs([[g, c], [c, g, c]], [text, tiny_ov.prompt("What?", 3)])
    counts = (inputs["input_ids"] == tiny_ov.image_token_id).sum(-1).tolist()
    assert counts == [n, n + tiny_ov.num_image_tokens(c.size)]
    with pytest.raises(ValueError):
        OneVisionAdapter(tiny_ov.model, tiny_ov.processor, interleave="tiles")


def test_final_input_tokens_on_hr8k_sizes(tiny_ov):
    """benchmarks/bench_ov_tokens.py's measurement on the tiny OV model (real processor settings): a
    7431x5358 global view plus a 774x788 crop (an s_max=5 ROI of the HR-Bench preset) is 7257 + 7209
    tokens with anyres interleave and 2 x 730 in OV's native multi-image mode."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_ov_tokens import HR8K, count, crop_sizes
    native = OneVisionAdapter(tiny_ov.model, tiny_ov.processor, interleave="native")
    crops = crop_sizes(tiny_ov)
    assert crops["ROI s_max=5"] == (774, 788) and crops["ROI s_min=3"] == (464, 473)
    assert tiny_ov.num_image_tokens(HR8K) == 7257 and tiny_ov.num_image_tokens((774, 788)) == 7209
    assert count(tiny_ov, [HR8K, (774, 788)]) == 7257 + 7209 == 14466      # processor == formula inside count
    assert count(native, [HR8K, (774, 788)]) == 2 * 730
    table = (Path(__file__).resolve().parent.parent / "benchmarks" / "results_ov_tokens.md").read_text()
    assert "| type-1, one target: global + s_max crop | 7431x5358, 774x788 | 14466 | 1460 | 7939 |" in table


def _hot(cells):
    def hook(target, layout, m):
        out = torch.zeros_like(m)
        out[cells[target]] = 1.0
        return out
    return hook


def test_multi_target_gives_global_view_plus_each_crop(tiny_ov, monkeypatch):
    seen = _record_inputs(tiny_ov, monkeypatch)
    img = Image.new("RGB", (1500, 500), (50, 50, 50))
    f = Focus(tiny_ov, preset("llava-onevision", "vstar", n_steps=1, overrun=False),
              map_hook=_hot({"cat": (5, 4), "dog": (8, 30)}))
    tr = f.answer(img, "Is the cat on the left or right of the dog?", targets=["cat", "dog"])
    boxes = [C.enlarge_box(t.rois[t.best].box, 384, 1500, 500, 1.2) for t in tr.per_target]   # far apart: kept
    assert tr.final_mode == "multi-image" and tr.search_fp == 2 and tr.chosen_boxes == C.merge_near(boxes, 50) == boxes
    assert len(tr.final_images) == 3 and tr.final_images[0].size == img.size
    g = np.asarray(tr.final_images[0])
    for b in boxes:   # every chosen box is outlined in red on the global view
        assert (g[b[1], b[0] + 5] == (255, 0, 0)).all()
    _, texts, inputs = [s for s in seen if len(s[0][0]) > 1][-1]
    want = tiny_ov.final_input_tokens([im.size for im in tr.final_images])
    assert texts[0].count("<image>") == 3 and int((inputs["input_ids"] == tiny_ov.image_token_id).sum()) == want


# The final prompt of global-local models (decisions.md D10): ZoomEye's views (each ROI enlarged to >= the
# encoder side x 1.2, near ones merged) and a caption after each image; the old input one config away.
TWO_Q = "Is the cat on the left or right of the dog?"
CAPTIONS_ONE = ["This is the whole image; the region of interest is outlined in red.",
                "This is a close-up of the outlined region."]
CAPTIONS_MANY = ["This is the whole image; the regions of interest are outlined in red.",
                 "This is a close-up of one of the outlined regions.", "This is a close-up of one of the outlined regions."]
OLD_FINAL = dict(final_min_side=None, final_scale=None, final_captions=False)


def _final_input(m, family, monkeypatch, cells, question, size, **over):
    """(image, trace, final images, the user turn's body, final inputs) of one FOCUS answer with hot cells."""
    seen = _record_inputs(m, monkeypatch)
    img = _noise(*size, seed=7)
    f = Focus(m, preset(family, n_steps=1, overrun=False, **over), map_hook=_hot(cells))
    tr = f.answer(img, question, targets=list(cells))
    images, texts, inputs = seen[-1]                       # the final answer is the last model input
    assert len(images) == 1 and images[0] == tr.final_images
    body = texts[0].split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    return img, tr, images[0], body, inputs


def check_final_prompt(m, family, monkeypatch, tag: str, side: int, size, one, far, near):
    """tag: how the adapter writes one image followed by its caption ("{}" = the caption)."""
    from focuslib.core.compose import highlight
    W, H = size
    n_img = lambda inputs: int((inputs["input_ids"] == m.image_token_id).sum())
    # one target: [global view with the ENLARGED ROI outlined, that view], each followed by its caption
    img, tr, ims, body, inputs = _final_input(m, family, monkeypatch, one, Q, size)
    raw = tr.per_target[0].rois[tr.per_target[0].best].box
    box = C.enlarge_box(raw, side, W, H, 1.2)
    zoomeye = lambda d, n: min(int(max(d, side) * 1.2), n)   # get_patch: max(side, encoder side) x 1.2, in the image
    assert (box[2] - box[0], box[3] - box[1]) == (zoomeye(raw[2] - raw[0], W), zoomeye(raw[3] - raw[1], H))
    assert box[2] - box[0] > raw[2] - raw[0] and box[3] - box[1] > raw[3] - raw[1]
    assert tr.chosen_boxes == [box] and tr.final_mode == "multi-image" and len(ims) == 2
    assert np.array_equal(np.asarray(ims[0]), np.asarray(highlight(img, [box])))
    assert np.array_equal(np.asarray(ims[1]), np.asarray(img.crop(box)))
    assert body == "".join(tag.format(c) for c in CAPTIONS_ONE) + Q
    new_tokens, new_len = n_img(inputs), inputs["input_ids"].shape[1]
    assert new_tokens == sum(m.num_image_tokens(im.size) for im in ims)
    # the old input: the ROI as proposed, images first, no captions -- fewer image and text tokens
    _, tr0, ims0, body0, inputs0 = _final_input(m, family, monkeypatch, one, Q, size, **OLD_FINAL)
    assert tr0.chosen_boxes == [raw] and ims0[1].size == (raw[2] - raw[0], raw[3] - raw[1])
    assert body0 == tag.split("{}")[0].rstrip("\n") * 2 + ("\n" if "<image>" in tag else "") + Q
    assert n_img(inputs0) == sum(m.num_image_tokens(im.size) for im in ims0) < new_tokens
    caption_tokens = len(m.tokenizer("".join(CAPTIONS_ONE)).input_ids)
    assert new_len - inputs0["input_ids"].shape[1] >= new_tokens - n_img(inputs0) + caption_tokens
    # two far targets: two close-ups, plural captions
    img, tr, ims, body, _ = _final_input(m, family, monkeypatch, far, TWO_Q, size)
    boxes = [C.enlarge_box(t.rois[t.best].box, side, W, H, 1.2) for t in tr.per_target]
    assert tr.chosen_boxes == C.merge_near(boxes, 50) and len(tr.chosen_boxes) == 2 and len(ims) == 3
    assert [im.size for im in ims[1:]] == [(b[2] - b[0], b[3] - b[1]) for b in tr.chosen_boxes]
    assert body == "".join(tag.format(c) for c in CAPTIONS_MANY) + TWO_Q
    # two near targets: their enlarged views merge into ONE close-up (ZoomEye's merge_bbox_list)
    img, tr, ims, body, _ = _final_input(m, family, monkeypatch, near, TWO_Q, size)
    boxes = [C.enlarge_box(t.rois[t.best].box, side, W, H, 1.2) for t in tr.per_target]
    assert boxes[0] != boxes[1] and tr.chosen_boxes == [R.union_box(boxes)] and len(ims) == 2
    assert body == "".join(tag.format(c) for c in CAPTIONS_ONE) + TWO_Q


def test_final_prompt_captions_and_zoomeye_views(tiny_ov, monkeypatch):
    check_final_prompt(tiny_ov, "llava-onevision", monkeypatch, "<image>\n{}\n", 384, (1500, 500),
                       one={"cat": (5, 4)}, far={"cat": (5, 4), "dog": (8, 30)}, near={"cat": (5, 4), "dog": (5, 9)})


def test_type2_selects_all_confident_rois(tiny_ov, monkeypatch):
    fake, state = scripted(tiny_ov, {0, 3})
    monkeypatch.setattr(tiny_ov, "existence_logits", fake)
    f = Focus(tiny_ov, preset("llava-onevision", "vstar", n_steps=2, k=8))
    tr = f.answer(_noise(600, 600, seed=4), "How many birds are in the image?", targets=["all birds"])
    t = tr.per_target[0]
    assert tr.qtype == 2 and len(t.verified) == len(t.rois) > 2 and t.selected == [0, 3]
    assert tr.search_fp == 1 + len(t.rois)
    assert tr.chosen_boxes == C.merge_near([C.enlarge_box(t.rois[i].box, 384, 600, 600, 1.2) for i in (0, 3)], 50)
    assert tr.final_mode == "multi-image" and len(tr.final_images) == 1 + len(tr.chosen_boxes)
    tr = Focus(tiny_ov, preset("llava-onevision", "vstar", n_steps=2, k=8, final_min_side=None, final_scale=None,
                               merge_buffer=0)).answer(_noise(600, 600, seed=4), "How many birds?", targets=["all birds"])
    t = tr.per_target[0]   # ROIs as proposed: the overlapping ones merged (A.5)
    assert tr.chosen_boxes == C.merge_overlapping([t.rois[i].box for i in t.selected or [t.best]])


# ---- 4. batched verification -----------------------------------------------------------------------
def test_batched_verification_equals_one_by_one(tiny_ov):
    img = _noise(1300, 900, seed=3)
    crops = [img.crop(b) for b in [(0, 0, 300, 300), (100, 50, 900, 250), (900, 100, 1300, 900), (10, 10, 60, 400)]]
    counts = {tiny_ov.num_image_tokens(c.size) for c in crops}
    assert len(counts) >= 3                           # really different token counts -> left padding
    batched = tiny_ov.existence_logits(crops, "red car")
    single = torch.cat([tiny_ov.existence_logits([c], "red car") for c in crops])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


def test_focus_ask_cli(tiny_ov_path, tmp_path, capsys):
    from focuslib.cli import main
    img = tmp_path / "img.png"
    _noise(640, 480).save(img)
    js = tmp_path / "t.json"
    rc = main(["ask", "--model", str(tiny_ov_path), "--image", str(img), "--question",
               "What is the color of the kite?", "--n-steps", "2", "--json", str(js), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "llava-onevision" in out and "RANDOM weights" in out and "multi-image" in out
    assert json.loads(js.read_text())["search_fp"] >= 1
