"""ZoomEye against the official algorithm (om-ai-lab/ZoomEye, decisions.md D25): scripted confidences drive
our search, and the visit order, the chosen view and the forward passes are compared with values worked out by
hand from the official code (ZoomEye/zoom_eye.py zoom_eye_search_type1 / post_order_search, tree.py,
zoom_model.py). Each test also fails on the earlier re-implementation (fixed pop cap, w(d) = d/(depth+1),
2x2 only, leaf at <=, type-2 breadth-first, no root rules, no whole-image filter, crop-of-box final input).
End to end on the tiny LLaVA / OneVision and through `focus eval`."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from focuslib.eval.baselines.zoomeye import (FP_PURPOSES, ZOOM_CAPTIONS, Node, ZoomEye, expected_fp_full_tree, grow,
                                             split, tree_depth, zoomeye_preset)
from focuslib.cli import main
from focuslib.eval.runner import evaluate, read_records
from focuslib.offline.synthetic_benchmarks import write_synthetic

W, H = 1024, 768
TL, TR, BL, BR = (0, 0, 512, 384), (512, 0, 1024, 384), (0, 384, 512, 768), (512, 384, 1024, 768)
QUAD = {TL: 0.5, TR: 0.4, BL: 0.3, BR: 0.2}   # priorities of the depth-1 quadrants (c_e = c_l = v)


def coord_image(w=W, h=H) -> Image.Image:
    """Each pixel encodes its own position, so a crop tells where it came from (w, h <= 4096)."""
    x = np.arange(w)[None, :].repeat(h, 0)
    y = np.arange(h)[:, None].repeat(w, 1)
    arr = np.stack([x % 256, y % 256, (x // 256) * 16 + (y // 256)], -1).astype(np.uint8)
    return Image.fromarray(arr)


def position(im: Image.Image, at=(0, 0)) -> tuple[int, int]:
    r, g, b = im.getpixel(at)[:3]
    return (b // 16) * 256 + r, (b % 16) * 256 + g


def decode(im: Image.Image) -> tuple[int, int, int, int]:
    x0, y0 = position(im)
    return (x0, y0, x0 + im.width, y0 + im.height)


def logit_row(c: float) -> list[float]:
    c = max(-0.999, min(0.999, c))
    return [math.log((1 + c) / (1 - c)), 0.0]   # c_yes = 2*(sigmoid(l_yes - l_no) - 0.5) = c


class FakeMLLM:
    """Scripted confidences: script(kind, box, text) -> c; kind e / l / a / f (existence, latent, answering,
    whole-image filter); box = the view decoded from the coordinate image. Logs every call in order."""
    family, multi_image, device = "llava-1.5", False, "cpu"
    KINDS = {"zoomeye_existence": "e", "zoomeye_latent": "l", "zoomeye_answering": "a", "zoomeye_filter": "f"}

    def __init__(self, script):
        self.script, self.calls, self.log = script, Counter(), []

    def ask_yes_no(self, images, text, purpose=None):
        self.calls[purpose] += len(images)
        rows = []
        for im in images:
            k, box = self.KINDS[purpose], decode(im)
            self.log.append((k, box))
            rows.append(logit_row(self.script(k, box, text)))
        return torch.tensor(rows)

    def generate(self, images, text, max_new_tokens=16, purpose="answer"):
        self.calls[purpose] += 1
        self.final, self.final_text = images, text
        return "A"

    def generate_text(self, prompt, **kw):
        raise AssertionError("targets are given in these tests")


def contains(box, p):
    return box[0] <= p[0] < box[2] and box[1] <= p[1] < box[3]


def run(script, targets=("car",), image=None, **cfg):
    m = FakeMLLM(script)
    cfg.setdefault("min_patch", 0)   # views = the node boxes exactly (grow() adds nothing)
    tr = ZoomEye(m, zoomeye_preset("llava-1.5", **cfg)).answer(image or coord_image(), "What is the color of the car?",
                                                              targets=list(targets))
    return m, tr


def pops(m):
    return [b for k, b in m.log if k == "a"]


def quad_script(answer=lambda box: -0.9, deep=lambda box: -0.5):
    """Priority v = c_e = c_l by node (depth-1 quadrants QUAD, depth 2 `deep`), the root never scored."""
    def script(kind, box, text):
        if kind == "a":
            return answer(box)
        assert box != (0, 0, W, H), "the root never gets c_e / c_l"
        return QUAD.get(box, None) if box in QUAD else deep(box)
    return script


# ---- type-1: the stopping schedule -------------------------------------------------------------
def test_schedule_ends_a_search_that_never_answers():
    # D = 2 (depth 2, 1024x768): pop limit 3*D = 6. Pops: root (expand: 4 x c_e,c_l), TL .5, TR .4, BL .3, BR .2
    # (each expanded: 16 grandchildren x 2), then grandchildren (all -0.5, ties in queue order: TL's, TR's, BL's).
    # Threshold falls at pops 6, 8, 10, 12, 14 to 0.5, 0.4, 0.2, 0.0, -0.2; no c_a (-0.9) ever reaches it and
    # -0.2 < lower bound 0 ends the search at pop 14 (the old code popped all 21 nodes: 61 FPs).
    m, tr = run(quad_script(), depth=2)
    t = tr.per_target[0]
    assert t["num_pop"] == 14 and t["max_depth"] == 2 and t["best"] is None
    assert [p for p, _ in t["thresholds"]] == [6, 8, 10, 12, 14]
    assert [round(x, 6) for _, x in t["thresholds"]] == [0.5, 0.4, 0.2, 0.0, -0.2]
    seen = pops(m)
    assert seen[:5] == [(0, 0, W, H), TL, TR, BL, BR]
    assert seen[5:9] == split(TL, 4) and seen[9:13] == split(TR, 4) and seen[13] == split(BL, 4)[0]
    assert tr.search_fp == 14 + 2 * (4 + 16) == 54 and m.calls["zoomeye_answering"] == 14
    assert tr.final_mode == "whole" and "not in the final input" in " ".join(tr.notes)


def test_falling_threshold_takes_the_best_popped_view():
    # as above, but c_a(TR) = 0.45 and c_a(BL) = 0.42: nothing reaches 0.6 or (pop 6) 0.5; at pop 8 the
    # threshold is 0.4: TR and BL qualify, the higher c_a (TR) is kept and the search ends.
    # FPs: 8 c_a + 2 x (4 + 16) = 48 (old code: 61, every node popped).
    m, tr = run(quad_script(answer=lambda b: {TR: 0.45, BL: 0.42}.get(b, -0.9)), depth=2)
    t = tr.per_target[0]
    assert t["num_pop"] == 8 and tr.search_fp == 48 and t["stopped"] is False
    assert t["rois"][t["best"]]["box"] == TR and tr.chosen_boxes == [TR] and decode(m.final[0]) == TR


# whole tree popped when it has at most 3D + 8 nodes: N c_a + 2 (N - 1) c_e, c_l
@pytest.mark.parametrize("depth,children,expected", [(1, 2, 7), (1, 4, 13), (2, 2, 19), (3, 2, 43)])
def test_fp_of_a_small_tree_that_never_answers(depth, children, expected):
    m, tr = run(lambda k, b, t: -0.9, depth=depth, children=children)
    n = sum(children ** d for d in range(depth + 1))
    assert n <= 3 * depth + 8 and tr.search_fp == expected == expected_fp_full_tree(depth, children)
    assert m.calls["zoomeye_answering"] == n and m.calls["zoomeye_existence"] == m.calls["zoomeye_latent"] == n - 1
    assert tr.model_calls["answer"] == 1   # the final answer is not a search FP


def test_stop_at_the_root_costs_one_pass():
    m, tr = run(lambda k, b, t: 0.9 if k == "a" else -0.9, depth=5)
    assert tr.search_fp == 1 and tr.final_mode == "whole" and m.final[0].size == (W, H)


# ---- type-1: the depth weight ------------------------------------------------------------------
@pytest.mark.parametrize("bias,first", [(None, TL), (0.0, TR)])
def test_depth_weight_uses_the_real_tree_depth_and_bias(bias, first):
    # min_patch 300: 1024x768 -> 512x384 -> 256x192 (< 300, leaves): real depth 2 although depth=5, so D = 2.
    # LLaVA b = 0.2: w(1) = 0.8 * 1/4 + 0.2 = 0.4; TL (c_e .9, c_l 0) = .36 beats the others (0, .5) = .30.
    # b = 0: w(1) = .25: TL .225 < .375 -> TR (first of the tied). With D = depth = 5 (or the old w = d/6) TL
    # would lose too. The first child popped answers (c_a .9): FPs 1 + 8 + 1.
    def script(kind, box, text):
        if kind == "a":
            return -0.9 if box == (0, 0, W, H) else 0.9
        return {"e": 0.9, "l": 0.0}[kind] if box == TL else {"e": 0.0, "l": 0.5}[kind]
    m, tr = run(script, depth=5, min_patch=300, bias=bias)
    t = tr.per_target[0]
    assert t["max_depth"] == 2 and tr.chosen_boxes == [first] and tr.search_fp == 10
    w = 0.4 if bias is None else 0.25
    assert all(abs(r["w"] - w) < 1e-9 for r in t["rois"] if r["depth"] == 1)
    assert zoomeye_preset("llava-1.5").bias == 0.2 and zoomeye_preset("llava-onevision").bias == 0.6
    assert zoomeye_preset("llava-onevision").weight(2, 2) == 1.0 and zoomeye_preset("llava-onevision").weight(0, 5) == 0.6


# ---- the tree ----------------------------------------------------------------------------------
def test_strips_grid_and_leaf_below_min_patch():
    assert split((0, 0, 1000, 500), 4) == [(0, 0, 250, 500), (250, 0, 500, 500), (500, 0, 750, 500), (750, 0, 1000, 500)]
    assert split((0, 0, 400, 800), 4) == [(0, 0, 400, 200), (0, 200, 400, 400), (0, 400, 400, 600), (0, 600, 400, 800)]
    assert split((0, 0, 1001, 700), 4) == [(0, 0, 500, 350), (500, 0, 1001, 350), (0, 350, 500, 700), (500, 350, 1001, 700)]
    assert split((0, 0, 10, 4), 2) == [(0, 0, 5, 4), (5, 0, 10, 4)] and split((0, 0, 1, 1), 4) == []
    cfg = zoomeye_preset("llava-1.5")                      # leaf when the longer side < 336
    assert tree_depth((0, 0, 672, 672), cfg, 5) == 2      # 672 -> 336 (not < 336: split) -> 168
    assert tree_depth((0, 0, 670, 670), cfg, 5) == 1      # 670 -> 335 (< 336: leaf)
    assert tree_depth((0, 0, 671, 671), cfg, 5) == 2      # 671 -> 335 + remainder 336: the last cell splits
    assert tree_depth((0, 0, 2246, 1582), cfg, 5) == 3 and tree_depth((0, 0, 2246, 1582), cfg, 2) == 2
    # a 1200x400 image (h/w = 1/3) is searched as four 300x400 strips
    m, tr = run(lambda k, b, t: 0.9 if (k == "a" and b[0] == 600) or k != "a" and b[0] == 600 else -0.9,
                image=coord_image(1200, 400), depth=1)
    assert pops(m) == [(0, 0, 1200, 400), (600, 0, 900, 400)] and tr.chosen_boxes == [(600, 0, 900, 400)]


def test_views_are_grown_to_the_encoder_side():
    # LLaVA-1.5 node (0,0,256,192) -> view (0,0,336,336) (centre (128,96), left/top clamped at 0);
    # far edge (1792,832,2048,1024) of a 2048x1024 image -> (1752,760,2048,1024) (clipped, not shifted).
    assert grow((0, 0, 256, 192), W, H, 336, None) == (0, 0, 336, 336)
    assert grow((1792, 832, 2048, 1024), 2048, 1024, 336, None) == (1752, 760, 2048, 1024)
    assert grow((0, 0, 512, 384), W, H, 384, 1.2) == (0, 0, 614, 460)   # OV: max(side, 384) * 1.2


# ---- several targets -----------------------------------------------------------------------------
def test_several_targets_no_root_answering_and_search_to_a_leaf():
    # LLaVA, 2 targets: c_a is never asked at the root (it would say 0.9 and stop there) and a candidate ends
    # the search only after a bottom node. Per target: pop root (no FP), score 4 quadrants (8), pop TL: c_a .9
    # -> candidate, not yet at the bottom: expand TL (8); TL's first child (.6) beats TR (.4): c_a .9 ->
    # candidate, it is at depth D = 2 -> stop. 18 FPs per target; the deeper candidate is chosen.
    tltl = split(TL, 4)[0]
    m, tr = run(quad_script(answer=lambda b: 0.9, deep=lambda b: 0.6 if b == tltl else 0.1),
                targets=["car", "dog"], depth=2)
    assert (("a", (0, 0, W, H)) not in m.log) and pops(m) == [TL, tltl, TL, tltl]
    assert tr.search_fp == 2 * 18 and [t["num_pop"] for t in tr.per_target] == [3, 3]
    assert [t["rois"][t["best"]]["box"] for t in tr.per_target] == [tltl, tltl]
    assert tr.final_mode == "crop" and tr.chosen_boxes == [tltl]


# ---- counting ----------------------------------------------------------------------------------
def test_counting_post_order_existence_to_depth_two_with_root():
    # "all cars": only c_e, every node down to depth 2 including the root, children before their parent.
    # Instances at p1 (in TL's first child) and p2 (in BL's last child). c_e: depth 2 with an instance .9;
    # TL .5, BL .95, root .7, the rest -.9. Kept (c_e >= max(.6, every c_e below)): TL.0 (.9), BL.3 (.9),
    # BL (.95 >= .9); not TL (.5 < .9), not the root (.7 < .95). 21 FPs (old: 24, breadth-first, root unscored).
    p1, p2 = (100, 100), (300, 700)
    top = {TL: 0.5, BL: 0.95, (0, 0, W, H): 0.7}

    def script(kind, box, text):
        assert kind == "e"
        if box in top or box in QUAD:
            return top.get(box, -0.9)
        return 0.9 if contains(box, p1) or contains(box, p2) else -0.9
    m, tr = run(script, targets=["all cars"], depth=5)
    order = [b for _, b in m.log]
    expected = []
    for q in (TL, TR, BL, BR):
        expected += split(q, 4) + [q]
    assert tr.qtype == 2 and order == expected + [(0, 0, W, H)] and tr.search_fp == 21
    t = tr.per_target[0]
    assert [t["rois"][i]["box"] for i in t["selected"]] == [split(TL, 4)[0], split(BL, 4)[3], BL]
    # final input: the kept views merge (BL holds BL.3) -> TL.0 and BL, union (0,0,512,768) <= 1000 px: one crop
    assert tr.final_mode == "crop" and tr.chosen_boxes == [(0, 0, 512, 768)]


def test_types_are_decided_per_target():
    # ["all cars", "dog"], depth 1: "cars" gets the post-order existence search in the singular (root + 4 = 5
    # FPs); "dog" is one of several targets: no root c_a, 4 quadrants scored (8), all 4 popped (c_a -.9; drops
    # at pops 3 and 5 find nothing) = 12. 17 FPs; nothing qualifies for the dog, the kept car views do not
    # exist (-.9 < .6): whole image.
    texts = []

    def script(kind, box, text):
        texts.append((kind, text))
        return -0.9
    m, tr = run(script, targets=["all cars", "dog"], depth=1)
    assert tr.search_fp == 5 + 12 and [t.get("num_pop") for t in tr.per_target] == [None, 5]
    assert {t for k, t in texts[:5]} == {"Is there a car in the image?"} and tr.final_mode == "whole"


# ---- final input (single-image model) ------------------------------------------------------------
def test_single_image_final_input_grown_crop_or_two_blocks():
    img = coord_image(2048, 1024)
    ze = ZoomEye(FakeMLLM(None), zoomeye_preset("llava-1.5"))
    mode, ims, boxes = ze.compose(img, [Node((0, 0, 256, 192), 2)])
    assert mode == "crop" and boxes == [(0, 0, 336, 336)] and decode(ims[0]) == (0, 0, 336, 336)
    # two far views (union 2048 px > 1000): each resized to 336 on a 672x672 canvas, left one first, vertical
    # offset (760+1024)//2 - 336//2 = 724 clipped to 336: left at (0, 0), right at (336, 336)
    mode, ims, boxes = ze.compose(img, [Node((1792, 832, 2048, 1024), 2), Node((0, 0, 256, 192), 2)])
    assert mode == "canvas" and ims[0].size == (672, 672) and boxes == [(1752, 760, 2048, 1024), (0, 0, 336, 336)]
    assert position(ims[0], (0, 0)) == (0, 0)
    x, y = position(ims[0], (336, 336))
    assert abs(x - 1752) <= 2 and abs(y - 760) <= 2
    # near views (within 50 px) merge into their union; the root alone is the whole image
    assert ze.compose(img, [Node((0, 0, 256, 192), 2), Node((380, 0, 636, 192), 2)])[2] == [(0, 0, 676, 336)]
    assert ze.compose(img, [Node((0, 0, 2048, 1024), 0)])[0] == "whole"


# ---- multi-image models (OneVision): two-image views, whole-image filter ------------------------
class FakeOV(FakeMLLM):
    """Multi-image: two-image views are decoded at the centre of the enlarged view."""
    family, multi_image = "llava-onevision", True

    def ask_yes_no(self, images, text, purpose=None):
        self.calls[purpose] += len(images)
        rows = []
        for im in images:
            k = self.KINDS[purpose]
            box = ("small",) if im.size == (384, 384) else decode(im)
            self.log.append((k, box))
            rows.append(logit_row(self.script(k, box, text)))
        return torch.tensor(rows)

    def ask_views(self, images, text, purpose=None):
        self.calls[purpose] += 1
        self.view_texts = getattr(self, "view_texts", []) + [text]
        glob, zoomed = images
        assert glob.size == (384, 384) and zoomed.getpixel((1, 1))[:3] == (255, 0, 0)   # outlined
        k, p = self.KINDS[purpose], position(zoomed, (zoomed.width // 2, zoomed.height // 2))
        self.log.append((k, p))
        return torch.tensor([logit_row(self.script(k, p, text))])


def run_ov(script, targets):
    m = FakeOV(script)
    tr = ZoomEye(m, zoomeye_preset("llava-onevision", depth=1)).answer(
        coord_image(), "What is the color of the car?", targets=targets)
    return m, tr


def test_ov_skips_the_search_when_a_target_is_answerable_on_the_whole_image():
    # filter: c_a of each target's own question on the shrunk whole image (2 FPs); "dog" .7 >= .6 -> no search
    m, tr = run_ov(lambda k, b, t: 0.7 if "dog" in t else 0.1, ["car", "dog"])
    assert [k for k, _ in m.log] == ["f", "f"] and all(b == ("small",) for _, b in m.log)
    assert tr.search_fp == 2 and tr.final_mode == "whole" and m.final == [tr.final_images[0]]
    assert tr.final_images[0].size == (W, H) and not tr.per_target


def test_ov_several_targets_root_answering_and_two_image_views():
    # OV preset, depth 1: D = 1 (quadrants 512x384 are not < 384, the depth limit ends the tree); views grown to
    # 384 * 1.2. Filter passes (.1 < .6: 2 FPs). Per target (OV asks c_a at the root too): root c_a .9 ->
    # candidate, not at the bottom: 4 quadrants scored on two-image views (8), TL (highest) c_a .9 -> candidate
    # at D = 1 -> stop; deepest candidate TL. 2 + 2 x (1 + 8 + 1) = 22 FPs.
    # Final: [global view, outlined grown TL (0,0,614,460) enlarged], a caption after each image, then the question.
    def script(kind, p, text):
        if kind == "f":
            return 0.1
        if len(p) == 4:                       # the root: whole image
            assert kind == "a" and p == (0, 0, W, H)
            return 0.9
        text = text[-1]                       # two-image views: [caption, caption, question]
        if kind == "a":
            return 0.9 if contains(TL, p) else -0.9
        return 0.8 if contains(TL, p) else 0.0
    m, tr = run_ov(script, ["car", "dog"])
    assert tr.search_fp == 22 and m.calls["zoomeye_filter"] == 2 and m.calls["zoomeye_answering"] == 4
    assert [t["rois"][t["best"]]["box"] for t in tr.per_target] == [TL, TL]
    assert tr.final_mode == "multi-image" and len(m.final) == 2 and m.final[0].size == (384, 384)
    assert tr.chosen_boxes == [(0, 0, 614, 460)]
    # ZoomEye's "zoom" prompt structure (D25): image, caption, image, caption, question -- never one intro
    # after both images (the old layout: a single string)
    cap = list(ZOOM_CAPTIONS)
    assert m.final_text == cap + ["What is the color of the car?"]
    assert m.view_texts[0] == cap + ["Is there a car in the enlarged region?"]     # c_e of the 4 quadrants, then c_l
    assert m.view_texts[4] == cap + ["Given the enlarged region and where it lies in the whole picture, could a car "
                                     "turn up if you zoomed further into that region? Answer yes or no."]
    assert cap + ["What does the car look like?\nDo these images hold enough detail to answer that question with "
                  "certainty? Answer yes or no."] in m.view_texts
    assert len(m.view_texts) == 2 * (8 + 1) and all(t[:2] == cap and len(t) == 3 for t in m.view_texts)


def test_presets_follow_the_official_configs():
    q = zoomeye_preset("qwen2.5-vl")
    assert (q.answer_threshold, q.threshold_decrease, q.bias, q.min_patch, q.patch_scale) == (0.95, (0.05, 0.1, 0.2),
                                                                                            0.6, 448, 1.2)
    o = zoomeye_preset("llava-onevision")
    assert (o.answer_threshold, o.bias, o.min_patch, o.patch_scale, o.type2_threshold) == (0.6, 0.6, 384, 1.2, 0.6)
    with pytest.raises(ValueError, match="children"):
        zoomeye_preset("llava-1.5", children=3)
    with pytest.raises(ValueError, match="unknown ZoomEye option"):
        zoomeye_preset("llava-1.5", high=True)


# ---- real (tiny) adapters -------------------------------------------------------------------------
def test_tiny_llava_end_to_end(tiny_llava):
    img = Image.new("RGB", (320, 240), (30, 90, 160))
    before = Counter(tiny_llava.calls)
    tr = ZoomEye(tiny_llava, zoomeye_preset(tiny_llava.family, depth=2, children=2, min_patch=0)).answer(
        img, "What is the color of the car?\n(A) red\n(B) blue", targets=["car"])
    calls = Counter(tiny_llava.calls)
    calls.subtract(before)
    assert tr.search_fp == sum(calls[k] for k in FP_PURPOSES) > 0
    assert tr.search_fp <= expected_fp_full_tree(2, 2) and calls["answer"] == 1
    assert isinstance(tr.answer, str) and tr.final_images and tr.summary()["search_fp"] == tr.search_fp


def test_tiny_onevision_two_image_views(tiny_ov):
    # one target (no filter), a threshold no c_a reaches: the root's 4 children are scored on two-image views
    img = Image.new("RGB", (800, 600), (30, 90, 160))
    before = Counter(tiny_ov.calls)
    ze = ZoomEye(tiny_ov, zoomeye_preset(tiny_ov.family, depth=1, answer_threshold=1.01))
    tr = ze.answer(img, "What is the color of the car?", targets=["car"])
    calls = Counter(tiny_ov.calls)
    calls.subtract(before)
    assert calls["zoomeye_existence"] == calls["zoomeye_latent"] == 4 and "zoomeye_filter" not in calls
    assert tr.search_fp == sum(calls[k] for k in FP_PURPOSES) == 8 + calls["zoomeye_answering"]
    assert isinstance(tr.answer, str) and calls["answer"] == 1


def _two_image_prompts(m, monkeypatch, user_turn):
    """Run ZoomEye (depth 1) on the real adapter `m` with scripted c_a (root -0.5, children 0.9, so the first child
    popped is the answer's view) and return the prompt strings of its two-image forwards and of the final answer.
    `user_turn(captions, question)` is the expected user turn, written out literally per family."""
    texts = []
    build = m.build_inputs

    def record(images, prompts, offsets=False):
        texts.extend(p for ims, p in zip(images, prompts) if len(ims) == 2)
        return build(images, prompts, offsets=offsets)
    monkeypatch.setattr(m, "build_inputs", record)
    ze = ZoomEye(m, zoomeye_preset(m.family, depth=1))
    monkeypatch.setattr(ze, "_answering", lambda image, node, q: 0.9 if node.depth else -0.5)
    q = "What is the color of the car?"
    tr = ze.answer(Image.new("RGB", (800, 600), (30, 90, 160)), q, targets=["car"])
    assert tr.final_mode == "multi-image" and len(tr.final_images) == 2
    c1, c2 = ZOOM_CAPTIONS
    assert len(texts) == 4 * 2 + 1   # c_e and c_l of the 4 children, then the answer
    assert user_turn(c1, c2, "Is there a car in the enlarged region?") in texts[0]
    assert user_turn(c1, c2, "Given the enlarged region and where it lies in the whole picture, could a car turn up if "
                     "you zoomed further into that region? Answer yes or no.") in texts[4]
    assert user_turn(c1, c2, q) in texts[-1] and texts[-1].endswith("<|im_start|>assistant\n")
    return texts


def test_onevision_two_image_prompts_caption_each_image(tiny_ov, monkeypatch):
    # official "zoom" pre_information: <image>\n caption \n <image>\n caption \n question (the old layout,
    # "<image><image>\n" + one intro + question, fails)
    _two_image_prompts(tiny_ov, monkeypatch, lambda c1, c2, q: f"<|im_start|>user\n<image>\n{c1}\n<image>\n{c2}\n{q}"
                                                               "<|im_end|>\n")


def test_qwen_two_image_prompts_caption_each_image(tiny_qwen, monkeypatch):
    v = "<|vision_start|><|image_pad|><|vision_end|>"
    _two_image_prompts(tiny_qwen, monkeypatch, lambda c1, c2, q: f"<|im_start|>user\n{v}{c1}\n{v}{c2}\n{q}<|im_end|>\n")


def test_runner_and_cli_put_zoomeye_vicrop_and_focus_in_one_table(tiny_llava, tiny_llava_path, tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic("vstar", data, n=2, size=(160, 120))
    res = evaluate(tiny_llava, "vstar", "zoomeye", limit=2, out_dir=tmp_path / "runs", source=data, progress=False,
                   print_table=False, baseline_options=dict(depth=1, children=2, min_patch=0), flops=True)
    assert "zoomeye+d1c2-min_patch0" in res["stem"]
    for r in res["records"]:
        assert r["error"] is None and r["search_fp"] == r["trace"]["search_fp"] > 0
        assert r["search_fp"] == sum(r["model_calls"].get(k, 0) for k in FP_PURPOSES)
        assert r["time_s"] > 0 and r["flops"] > 0 and r["rois"]
    out = tmp_path / "cli"
    common = ["--model", str(tiny_llava_path), "--benchmark", "vstar", "--limit", "2", "--out", str(out), "--data",
              "synthetic", "--synthetic-n", "2", "--synthetic-size", "160", "--device", "cpu", "--no-progress"]
    assert main(["eval", "--method", "focus", "--n-steps", "1", *common]) == 0
    assert main(["eval", "--method", "zoomeye", "--depth", "1", "--children", "2", *common]) == 0
    assert main(["eval", "--method", "vicrop-rel", "--no-high", *common]) == 0
    printed = capsys.readouterr().out
    assert "vstar | zoomeye" in printed and "vstar | vicrop-rel" in printed and "eager" in printed
    files = {p.name.split("__")[2]: read_records(p) for p in out.glob("*.jsonl")}
    assert set(files) == {"focus", "zoomeye+d1c2", "vicrop-rel+low"}
    assert all(len(v) == 2 and all(r["error"] is None for r in v) for v in files.values())
    from focuslib.report import collect_results
    df = collect_results(out)
    table = df[(df.metric == "fp") & (df.category == "overall")]
    assert set(table.method) == {"focus", "zoomeye", "vicrop-rel"}
