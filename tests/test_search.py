"""FOCUS end to end on the tiny LLaVA: trace, FP accounting, final-input paths, coordinates."""
import numpy as np
import pytest
import torch
from PIL import Image

from focuslib.core import compose as C
from focuslib.core import rois as R
from focuslib.core.config import preset, replace
from focuslib.core.relevance import object_relevance
from focuslib.models.base import yes_confidence
from focuslib.core.search import Focus
from focuslib.eval.benchmarks import get_spec

Q = "What is the color of the car?\n(A) red\n(B) blue\nAnswer with the option's letter from the given choices directly."


def scripted(mllm, yes_at):
    """Make existence verification say Yes exactly for the crops whose ROI rank is in `yes_at`
    (per target, counted in call order), No otherwise; records every batch size."""
    state = {"seen": 0, "batches": []}
    real = mllm.existence_logits

    def fake(images, target):
        real(images, target)  # keep the real batched forward (and its call count)
        out = []
        for _ in images:
            out.append([2.0, -2.0] if state["seen"] in yes_at else [-2.0, 2.0])
            state["seen"] += 1
        state["batches"].append(len(images))
        return torch.tensor(out)
    return fake, state


@pytest.mark.parametrize("n_steps,overrun,yes_at,expect_verified", [
    (1, False, set(), 0),          # nothing to rank: Steps-1 (no overrun) = 1 FP per target
    (2, False, set(), 2),          # 1 map pass + 2 crops
    (4, False, {9}, 4),
    (1, True, {0}, 1),             # overrun not needed
    (1, True, {3}, 4),             # No, No, No, Yes -> 4 crops
    (2, True, {5}, 6),             # batch of 2 says No, then 2,3,4,5 one by one
    (4, True, {2}, 4),             # a Yes inside the batch: no overrun
    (4, True, set(), None),        # never Yes: every ROI verified, best confidence wins
])
def test_fp_accounting(tiny_llava, monkeypatch, n_steps, overrun, yes_at, expect_verified):
    fake, state = scripted(tiny_llava, yes_at)
    monkeypatch.setattr(tiny_llava, "existence_logits", fake)
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=n_steps, overrun=overrun, k=12, s_max=3))
    noise = np.random.default_rng(0).integers(0, 255, (600, 900, 3), dtype=np.uint8)
    tr = f.answer(Image.fromarray(noise), Q, targets=["red car"])
    t = tr.per_target[0]
    n_rois = len(t.rois)
    assert n_rois >= 8
    expect = n_rois if expect_verified is None else expect_verified
    assert len(t.verified) == expect
    assert tr.search_fp == 1 + expect                  # the paper's accounting (one target)
    assert tr.model_calls["relevance"] == 1 and tr.model_calls["answer"] == 1
    assert tr.model_calls.get("verify_crops", 0) == expect
    if expect:
        assert state["batches"][0] == min(n_steps, n_rois)   # the top n_steps in ONE forward
        assert all(b == 1 for b in state["batches"][1:])      # overrun goes one by one
        assert tr.model_calls["verify"] == len(state["batches"])
    if yes_at and min(yes_at) < expect:
        assert t.best == min(yes_at)
        assert t.rois[t.best].confidence > 0
    # the single-image final crop is the chosen ROI enlarged to LLaVA-1.5's 336 px around its centre
    assert tr.chosen_boxes == [C.enlarge_box(t.rois[t.best].box, 336, 900, 600)]
    assert tr.answer == tr.answer.strip() and tr.final_mode == "crop"


def test_trace_is_complete(tiny_llava):
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=2))
    tr = f.answer(Image.new("RGB", (800, 500), (200, 10, 10)), Q)
    assert tr.targets and tr.target_source in ("icl", "keyword") and tr.qtype == 1
    t = tr.per_target[0]
    assert t.map.shape == t.layout.shape == (24, 24)
    assert abs(float(t.map.sum()) - 1) < 1e-5 and float(t.map[~t.layout.valid].sum()) == 0
    scores = [r.score for r in t.rois]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= r.box[0] < r.box[2] <= 800 and 0 <= r.box[1] < r.box[3] <= 500 for r in t.rois)
    assert all(r.confidence is not None for i, r in enumerate(t.rois) if i in t.verified)
    assert {"targets", "relevance", "verify", "answer", "total"} <= set(tr.timings)
    s = tr.summary()
    import json
    json.dumps(s)
    assert s["search_fp"] == tr.search_fp and list(s["per_target"][0]["rois"][0]["box"]) == list(t.rois[0].box)


def _hot(cell):
    def hook(target, layout, m):
        out = torch.zeros_like(m)
        out[cell] = 1.0
        return out
    return hook


@pytest.mark.parametrize("size,cell", [((900, 900), (5, 17)), ((1800, 600), (10, 3)), ((600, 1800), (20, 9))])
def test_planted_map_coordinates(tiny_llava, size, cell):
    """A one-hot map at a cell -> the crop FOCUS answers on contains that cell's pixels, which we
    paint with a marker colour and find in the final image."""
    W, H = size
    lay = tiny_llava.grid_layout(Image.new("RGB", size))
    cell = (min(cell[0], int(torch.nonzero(lay.valid)[:, 0].max())),
            max(cell[1], 0))
    cell = tuple(int(v) for v in torch.nonzero(lay.valid)[
        torch.argmin(((torch.nonzero(lay.valid) - torch.tensor(cell)) ** 2).sum(1))])
    x0, y0, x1, y1 = (int(v) for v in lay.cell_boxes[cell])
    arr = np.full((H, W, 3), 40, np.uint8)
    arr[y0 + 3:y1 - 3, x0 + 3:x1 - 3] = (255, 0, 255)
    img = Image.fromarray(arr)
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=1, overrun=False), map_hook=_hot(cell))
    tr = f.answer(img, Q, targets=["car"])
    t = tr.per_target[0]
    assert t.rois[0].anchor == cell and t.best == 0
    bx = tr.chosen_boxes[0]
    assert bx[0] <= x0 and bx[1] <= y0 and bx[2] >= x1 and bx[3] >= y1
    final = np.asarray(tr.final_images[0])
    assert final.shape[:2] == (bx[3] - bx[1], bx[2] - bx[0])
    assert ((final == (255, 0, 255)).all(-1)).sum() == (x1 - x0 - 6) * (y1 - y0 - 6)


def test_multi_target_union_and_canvas(tiny_llava):
    img = Image.new("RGB", (2400, 1200), (50, 50, 50))
    near = {"cat": (10, 4), "dog": (10, 7)}
    far = {"cat": (10, 1), "dog": (10, 22)}
    for cells, mode in [(near, "union"), (far, "canvas")]:
        hook = lambda target, layout, m, cells=cells: _hot(cells[target])(target, layout, m)
        f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=1, overrun=False), map_hook=hook)
        tr = f.answer(img, "Is the cat on the left or right of the dog?", targets=["cat", "dog"])
        assert tr.final_mode == mode and tr.search_fp == 2
        boxes = [C.enlarge_box(t.rois[t.best].box, 336, 2400, 1200) for t in tr.per_target]
        if mode == "union":
            assert tr.chosen_boxes == [R.union_box(boxes)]
            assert tr.final_size == (tr.chosen_boxes[0][2] - tr.chosen_boxes[0][0],
                                     tr.chosen_boxes[0][3] - tr.chosen_boxes[0][1])
        else:
            assert R.box_distance(*boxes) > 1200 and tr.chosen_boxes == boxes
            assert tr.final_size[0] < 2400   # the empty space between them is dropped


def test_type2_selects_all_confident_rois(tiny_llava, monkeypatch):
    fake, state = scripted(tiny_llava, {0, 3, 4})
    monkeypatch.setattr(tiny_llava, "existence_logits", fake)
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=2, k=10))
    tr = f.answer(Image.new("RGB", (1200, 1200), (80, 80, 80)), "How many birds are in the image?",
                  targets=["all birds"])
    t = tr.per_target[0]
    assert tr.qtype == 2 and tr.targets == ["birds"]
    assert len(t.verified) == len(t.rois) > 2            # not limited by n_steps
    assert t.selected == [0, 3, 4]
    assert tr.search_fp == 1 + len(t.rois)
    assert tr.chosen_boxes == C.merge_near([C.enlarge_box(t.rois[i].box, 336, 1200, 1200) for i in (0, 3, 4)], 50)
    assert tr.final_mode in ("canvas", "crop")


def test_batched_verification_equals_one_by_one(tiny_llava):
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (900, 1300, 3), dtype=np.uint8))
    crops = [img.crop(b) for b in [(0, 0, 300, 300), (100, 50, 700, 250), (900, 600, 1300, 900),
                                   (10, 10, 60, 400), (500, 500, 501, 501)]]
    batched = tiny_llava.existence_logits(crops, "red car")
    single = torch.cat([tiny_llava.existence_logits([c], "red car") for c in crops])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(yes_confidence(batched), yes_confidence(single), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["kk", "random"])
def test_ablation_variants(tiny_llava, variant):
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=2, map_variant=variant))
    tr = f.answer(Image.new("RGB", (700, 500), (1, 2, 3)), Q, targets=["car"])
    assert tr.per_target[0].map.shape == (24, 24)
    # the random map needs no forward pass: only the verified crops count
    assert tr.search_fp == (0 if variant == "random" else 1) + len(tr.per_target[0].verified)


def test_no_ranking_ablation(tiny_llava):
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=8, ranking=False))
    tr = f.answer(Image.new("RGB", (700, 500), (1, 2, 3)), Q, targets=["car"])
    assert tr.search_fp == 1 and tr.per_target[0].best == 0


# ---- per-target types, singular type-2 prompts, "no ranking" = Steps-1 without overrun (D8) ----------


def _recording(mllm, monkeypatch, yes_for=lambda i: False):
    """Record the target name of every relevance and existence call; existence says Yes per call index."""
    seen = {"relevance": [], "existence": []}
    real_rel, real_ex = mllm.relevance_pass, mllm.existence_logits

    def rel(image, target, **kw):
        seen["relevance"].append(target)
        return real_rel(image, target, **kw)

    def ex(images, target):
        real_ex(images, target)
        out = []
        for _ in images:
            out.append([2.0, -2.0] if yes_for(len(seen["existence"])) else [-2.0, 2.0])
            seen["existence"].append(target)
        return torch.tensor(out)
    monkeypatch.setattr(mllm, "relevance_pass", rel)
    monkeypatch.setattr(mllm, "existence_logits", ex)
    return seen


def test_type2_is_per_target_and_singular(tiny_llava, monkeypatch):
    seen = _recording(tiny_llava, monkeypatch)
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=2, overrun=False, k=10))
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (700, 1000, 3), dtype=np.uint8))
    tr = f.answer(img, "How many bicycles are there left of the car?", targets=["all bicycles", "car"])
    bikes, car = tr.per_target
    assert tr.qtype == 2 and (bikes.qtype, car.qtype) == (2, 1)
    assert bikes.query == "bicycle" and car.query == "car"
    assert seen["relevance"] == ["bicycle", "car"]               # "Is there a bicycle", not "a bicycles"
    assert len(bikes.verified) == len(bikes.rois) > 2            # type-2: every ROI
    assert car.verified == [0, 1]                                # type-1: the top n_steps only
    assert set(seen["existence"]) == {"bicycle", "car"}
    assert seen["existence"].count("car") == 2
    assert tr.search_fp == 2 + len(bikes.rois) + 2


def test_no_ranking_equals_steps1_without_overrun(tiny_llava, monkeypatch):
    """Tab. 3's "no ranking" row equals Tab. 10's Steps-1 (no overrun): both on type-1 and type-2."""
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (800, 1100, 3), dtype=np.uint8))
    out = []
    for cfg in (preset("llava-1.5", "vstar", n_steps=1, overrun=False),
                preset("llava-1.5", "vstar", n_steps=8, ranking=False)):
        _recording(tiny_llava, monkeypatch, yes_for=lambda i: i % 3 == 0)
        f = Focus(tiny_llava, replace(cfg, k=15))
        for q, tg in (("How many dogs are there?", ["all dogs"]), ("What colour is the car?", ["car"]),
                      ("How many dogs are left of the car?", ["all dogs", "car"])):
            tr = f.answer(img, q, targets=tg)
            out.append((tr.chosen_boxes, tr.final_mode, tr.search_fp, tr.answer,
                        [(t.best, t.selected, t.verified) for t in tr.per_target]))
    assert out[:3] == out[3:]
    assert out[0][4][0][2]   # type-2 ROIs were verified (the threshold selects instances)


def test_single_image_final_input_follows_zoomeye(tiny_llava):
    """Type-2, three instances: two 60 px apart merge (ZoomEye's 50 px buffer), every block >= 336 px
    before it is scaled to 336 on the canvas; the far one stays its own block."""
    W, H = 2400, 1800
    img = Image.new("RGB", (W, H), (90, 90, 90))
    lay = tiny_llava.grid_layout(img)
    cells = [(8, 4), (8, 8), (16, 20)]   # 100 px cells: boxes (3x3 = 300 px) 100 px apart, and a far one

    def hook(target, layout, m):
        out = torch.full_like(m, 1e-4) * layout.valid
        for i, c in enumerate(cells):
            out[c] = 1.0 - 0.1 * i
        return out
    f = Focus(tiny_llava, preset("llava-1.5", "hrbench", n_steps=1, k=3, s_max=3, t_type2=-1.0),
              map_hook=hook)
    tr = f.answer(img, "How many lamps are there?", targets=["all lamps"])
    t = tr.per_target[0]
    raw = [t.rois[i].box for i in t.selected]
    assert len(raw) == 3 and all(b[2] - b[0] < 336 for b in raw)    # proposals smaller than 336 px
    big = [C.enlarge_box(b, 336, W, H) for b in raw]
    assert tr.chosen_boxes == C.merge_near(big, 50) and len(tr.chosen_boxes) == 2
    assert C.merge_overlapping(raw) == sorted(raw, key=lambda b: (b[1], b[0], b[3], b[2]))  # old rule: 3
    assert tr.final_mode == "canvas"
    canvas, placed = C.compose_canvas(img, tr.chosen_boxes, max_crop_side=336, gap=0)
    assert tr.final_size == canvas.size
    assert max(max(b[2] - b[0], b[3] - b[1]) for b in placed) == 336


def test_growth_rule_reaches_the_proposals(tiny_llava):
    """A peaked map: the default rule grows the top ROI to s_max, the old anchor rule keeps s_min."""
    def hook(target, layout, m):
        out = torch.full_like(m, 0.01) * layout.valid
        out[12, 12] = 1.0
        return out
    img = Image.new("RGB", (900, 900), (10, 10, 10))
    sides = {}
    for rule in ("map-mean", "anchor"):
        f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=1, overrun=False, growth_rule=rule),
                  map_hook=hook)
        g = f.answer(img, Q, targets=["car"]).per_target[0].rois[0].grid
        sides[rule] = g[2] - g[0]
    assert sides == {"map-mean": 5, "anchor": 3}


def test_rollout_norm_reaches_the_map(tiny_llava):
    img = Image.fromarray(np.random.default_rng(4).integers(0, 255, (500, 700, 3), dtype=np.uint8))
    maps = [Focus(tiny_llava, preset("llava-1.5", "vstar", rollout_norm=n)).relevance_map(img, "red car")[0]
            for n in ("row", "fig7-literal")]
    assert not torch.allclose(maps[0], maps[1], rtol=1e-3)


@pytest.mark.parametrize("bench,ks", [("vstar", [15, 15, 15, 30, 30]), ("hrbench4k", [15, 15, 30, 30, 30]),
                                      ("hrbench_8k", [15, 15, 30, 30, 30])])
def test_k_small_budget(bench, ks):
    """Tab. 7: k = 15 below n_steps 4; Tab. 10's HR-Bench FPs jump at Steps-3 instead (decisions.md D30)."""
    group = get_spec(bench).preset   # benchmark names and aliases: eval.benchmarks' one table
    assert [preset("llava-1.5", group, n_steps=n).k for n in (1, 2, 3, 4, 8)] == ks
    assert preset("llava-1.5", "hrbench", n_steps=1, k=40).k == 40
    assert preset("llava-onevision", "hrbench", n_steps=1).k == 30


def test_relevance_pass_keeps_only_the_map_layers_and_frees_them(tiny_llava, monkeypatch):
    """Issue 18: the pass keeps only the values of the layers the map reads, and Focus drops them once the map is made."""
    img = Image.new("RGB", (320, 240), (90, 120, 60))
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=2))
    layers = list(f.config.resolved_layers(tiny_llava.num_layers))
    assert 0 < len(layers) < tiny_llava.num_layers           # otherwise the test proves nothing
    asked, passes = [], []
    real_rel = tiny_llava.relevance_pass

    def rel(image, target, **kw):
        asked.append(kw.get("layers"))
        rp = real_rel(image, target, **kw)
        passes.append(rp)
        return rp
    monkeypatch.setattr(tiny_llava, "relevance_pass", rel)
    m, _, rp = f.relevance_map(img, "red car")
    assert asked == [layers]
    kept = [i for i, v in enumerate(passes[0].values) if v is not None]
    assert kept == layers                                    # the pass stored nothing else
    assert rp.values == [] and rp.keys_norope is None        # what Focus holds on to after the map
    monkeypatch.setattr(tiny_llava, "relevance_pass", real_rel)
    m_all, _, _ = f.relevance_map(img, "red car")            # same map as from a pass keeping every layer
    full = real_rel(img, "red car")
    ref = object_relevance(full.values, full.target_idx, full.layout.positions.flatten(), layers,
                           f.config.clamp_negative, f.config.rollout_norm).view(full.layout.shape)
    ref = ref * full.layout.valid
    torch.testing.assert_close(m, ref / ref.sum(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m, m_all)
