"""ZoomEye: forward passes per question equal what the tree shape and the stopping rule imply (scripted fake
adapter), the depth weighting decides the visiting order, type-2 collects every instance, and the method runs
end to end on the tiny LLaVA and through `focus eval` next to FOCUS."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from focuslib.baselines.zoomeye import ZoomEye, expected_fp_full_tree, split, zoomeye_preset
from focuslib.cli import main
from focuslib.runner import evaluate, read_records
from focuslib.synthetic_benchmarks import write_synthetic

W, H = 1024, 768


def coord_image(w=W, h=H) -> Image.Image:
    """Each pixel encodes its own position, so a crop tells where it came from."""
    x = np.arange(w)[None, :].repeat(h, 0)
    y = np.arange(h)[:, None].repeat(w, 1)
    arr = np.stack([x % 256, y % 256, (x // 256) * 16 + (y // 256)], -1).astype(np.uint8)
    return Image.fromarray(arr)


def decode(im: Image.Image) -> tuple[int, int, int, int]:
    r, g, b = im.getpixel((0, 0))
    x0, y0 = (b // 16) * 256 + r, (b % 16) * 256 + g
    return (x0, y0, x0 + im.width, y0 + im.height)


class FakeMLLM:
    """Scripted confidences: script(kind, box) -> c in (-1, 1); kind in e (existence) / l (latent) / a (answering)."""
    family, multi_image, device = "llava-1.5", False, "cpu"
    KINDS = {"zoomeye_existence": "e", "zoomeye_latent": "l", "zoomeye_answering": "a"}

    def __init__(self, script):
        self.script, self.calls, self.log = script, Counter(), []

    def yes_no_logits(self, images, text, purpose):
        self.calls[purpose] += len(images)
        rows = []
        for im in images:
            box = decode(im)
            c = max(-0.999, min(0.999, self.script(self.KINDS[purpose], box)))
            self.log.append((self.KINDS[purpose], box))
            rows.append([math.log((1 + c) / (1 - c)), 0.0])  # c_yes = 2*(sigmoid(l_yes - l_no) - 0.5)
        return torch.tensor(rows)

    def generate(self, images, text, max_new_tokens=16, purpose="answer"):
        self.calls[purpose] += 1
        self.final = images
        return "A"

    def generate_text(self, prompt, **kw):
        raise AssertionError("targets are given in these tests")


def contains(box, p):
    return box[0] <= p[0] < box[2] and box[1] <= p[1] < box[3]


def run(script, targets=("car",), **cfg):
    m = FakeMLLM(script)
    cfg.setdefault("min_patch", 0)
    tr = ZoomEye(m, zoomeye_preset("llava-1.5", **cfg)).answer(coord_image(), "What is the color of the car?",
                                                              targets=list(targets))
    return m, tr


# hand-computed: N nodes popped (1 FP each: answering) + (N - 1) non-root nodes scored (2 FPs: existence, latent)
@pytest.mark.parametrize("depth,children,expected", [(1, 2, 7), (1, 4, 13), (2, 2, 19), (2, 4, 61), (3, 2, 43)])
def test_fp_of_a_search_that_never_stops(depth, children, expected):
    m, tr = run(lambda k, b: -0.9, depth=depth, children=children)
    n = sum(children ** d for d in range(depth + 1))
    assert tr.search_fp == expected == expected_fp_full_tree(depth, children)
    assert m.calls["zoomeye_answering"] == n and m.calls["zoomeye_existence"] == m.calls["zoomeye_latent"] == n - 1
    assert tr.model_calls["answer"] == 1 and "answer" not in ("zoomeye_existence",)  # final answer not a search FP
    assert "no view reached" in " ".join(tr.notes)


def test_stop_at_the_root_costs_one_pass():
    m, tr = run(lambda k, b: 0.9 if k == "a" else -0.9, depth=5, children=4)
    assert tr.search_fp == 1 and tr.final_mode == "whole" and m.final[0].size == (W, H)


P = (800, 600)


def planted(stop_side):
    """The object sits at P; the view answers once it is no larger than stop_side on its long side."""
    def script(kind, box):
        inside = contains(box, P)
        if kind == "a":
            return 0.9 if inside and max(box[2] - box[0], box[3] - box[1]) <= stop_side else -0.5
        return 0.8 if inside else -0.8
    return script


@pytest.mark.parametrize("depth,children,stop_side,expected,chosen_depth", [
    (2, 4, 256, 1 + 8 + 1 + 8 + 1, 2),           # root, 4 kids, pop kid, 4 grandkids, pop grandkid -> stop
    (3, 2, 384, 1 + 4 + 1 + 4 + 1 + 4 + 1, 3),   # halves: 512x768 -> 512x384 -> 256x384 (long side 384)
    (5, 4, 512, 1 + 8 + 1, 1),                   # the first quadrant popped already answers
])
def test_fp_with_a_planted_object_and_early_stop(depth, children, stop_side, expected, chosen_depth):
    m, tr = run(planted(stop_side), depth=depth, children=children)
    assert tr.search_fp == expected
    (box,) = tr.chosen_boxes
    assert contains(box, P) and tr.final_mode == "crop" and decode(m.final[0]) == tuple(box)
    chosen = tr.per_target[0]["rois"][tr.per_target[0]["best"]]
    assert chosen["depth"] == chosen_depth and chosen["c_a"] >= 0.6
    # only nodes on the path to P were popped
    assert all(contains(b, P) for k, b in m.log if k == "a" and b != (0, 0, W, H))


def test_depth_weighting_decides_which_child_is_visited_first():
    # left half: strong existence, weak latent; right half: no existence, strong latent
    def script(kind, box):
        left = box[0] == 0 and box[2] < W
        if kind == "a":
            return -0.9 if box == (0, 0, W, H) else 0.9
        return {("e", True): 0.9, ("l", True): 0.3, ("e", False): 0.0, ("l", False): 0.6}[(kind, left)]
    _, shallow = run(script, depth=1, children=2)   # w(1) = 1/2: left 0.6 > right 0.3
    _, deep = run(script, depth=5, children=2)      # w(1) = 1/6: left 0.4 < right 0.5
    assert shallow.chosen_boxes == [(0, 0, 512, H)] and deep.chosen_boxes == [(512, 0, W, H)]
    assert shallow.search_fp == deep.search_fp == 1 + 4 + 1


def test_type2_collects_every_instance():
    p1, p2 = (100, 100), (900, 700)

    def script(kind, box):
        hit = contains(box, p1) or contains(box, p2)
        return {"e": 0.9 if hit else -0.9, "l": 0.5 if hit else -0.5, "a": 0.99}[kind]
    m, tr = run(script, targets=["all cars"], depth=2, children=4)
    # root expanded (4 x 2), the two quadrants with an instance expanded (2 x 4 x 2), no answering confidence
    assert tr.qtype == 2 and tr.search_fp == 8 + 16 and m.calls["zoomeye_answering"] == 0
    assert len(tr.chosen_boxes) == 2 and tr.final_mode == "canvas"
    assert sorted(contains(b, p1) for b in tr.chosen_boxes) == [False, True]
    assert any(contains(b, p2) for b in tr.chosen_boxes)


def test_several_targets_search_each_and_max_pops_caps():
    m, tr = run(lambda k, b: -0.9, targets=["car", "dog"], depth=1, children=4)
    assert tr.search_fp == 2 * 13 and len(tr.per_target) == 2
    m, tr = run(lambda k, b: -0.9, depth=5, children=4, max_pops=3)
    assert m.calls["zoomeye_answering"] == 3 and tr.search_fp == 3 + 2 * 4 * 3


def test_split_and_presets():
    assert split((0, 0, 10, 4), 2) == [(0, 0, 5, 4), (5, 0, 10, 4)]
    assert split((0, 0, 4, 10), 2) == [(0, 0, 4, 5), (0, 5, 4, 10)]
    assert len(split((0, 0, 10, 10), 4)) == 4 and split((0, 0, 1, 1), 4) == []
    assert zoomeye_preset("qwen2.5-vl").answer_threshold == 0.95 and zoomeye_preset("llava-1.5").answer_threshold == 0.6
    with pytest.raises(ValueError, match="children"):
        zoomeye_preset("llava-1.5", children=3)
    with pytest.raises(ValueError, match="unknown ZoomEye option"):
        zoomeye_preset("llava-1.5", high=True)


def test_min_patch_stops_splitting():
    m, tr = run(lambda k, b: -0.9, depth=5, children=4, min_patch=400)
    # 1024x768 -> 512x384 quadrants (<= 400 after one split? long side 512 > 400 -> split once more -> 256x192)
    assert m.calls["zoomeye_answering"] == 1 + 4 + 16 and tr.search_fp == 21 + 2 * 20


def test_tiny_llava_end_to_end(tiny_llava):
    img = Image.new("RGB", (320, 240), (30, 90, 160))
    before = Counter(tiny_llava.calls)
    tr = ZoomEye(tiny_llava, zoomeye_preset(tiny_llava.family, depth=2, children=2, min_patch=0)).answer(
        img, "What is the color of the car?\n(A) red\n(B) blue", targets=["car"])
    calls = Counter(tiny_llava.calls)
    calls.subtract(before)
    assert tr.search_fp == calls["zoomeye_existence"] + calls["zoomeye_latent"] + calls["zoomeye_answering"] > 0
    assert tr.search_fp <= expected_fp_full_tree(2, 2) and calls["answer"] == 1
    assert isinstance(tr.answer, str) and tr.final_images and tr.summary()["search_fp"] == tr.search_fp


def test_runner_and_cli_put_zoomeye_vicrop_and_focus_in_one_table(tiny_llava, tiny_llava_path, tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic("vstar", data, n=2, size=(160, 120))
    res = evaluate(tiny_llava, "vstar", "zoomeye", limit=2, out_dir=tmp_path / "runs", source=data, progress=False,
                   print_table=False, baseline_options=dict(depth=1, children=2, min_patch=0), flops=True)
    assert "zoomeye+d1c2-min_patch0" in res["stem"]
    for r in res["records"]:
        assert r["error"] is None and r["search_fp"] == r["trace"]["search_fp"] > 0
        assert r["search_fp"] == sum(r["model_calls"].get(k, 0) for k in
                                     ("zoomeye_existence", "zoomeye_latent", "zoomeye_answering"))
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
