"""The efficiency benchmark's accounting on the tiny model (benchmarks/bench_methods.py, issue 18)."""
import importlib.util
import sys
from pathlib import Path

import pytest

from focuslib.images import crop
from focuslib.models import load_mllm

spec = importlib.util.spec_from_file_location(
    "bench_methods", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_methods.py")
B = importlib.util.module_from_spec(spec)
sys.modules["bench_methods"] = B   # dataclasses resolve their module
spec.loader.exec_module(B)


def test_planted_image_and_scripted_answers():
    img, disc = B.make_image((1024, 768))
    assert B.target_pixels(img) > 0.7 * 3.14 * ((disc[2] - disc[0]) / 2) ** 2
    assert B.target_pixels(crop(img, (0, 0, 300, 300))) == 0        # the disc is at (0.71 W, 0.33 H)
    near = crop(img, (disc[0] - 100, disc[1] - 100, disc[2] + 100, disc[3] + 100))
    q = "Is there a ball in the image?"
    assert B.scripted_yes(near, q, 336) and not B.scripted_yes(crop(img, (0, 0, 300, 300)), q, 336)
    ans = "What colour is it?\nDoes this picture, as shown, hold enough detail to answer that question?"
    tight = crop(img, (disc[0] - 30, disc[1] - 30, disc[2] + 30, disc[3] + 30))
    assert B.scripted_yes(tight, ans, 336) and not B.scripted_yes(img, ans, 336)   # whole image: disc too small


@pytest.fixture(scope="module")
def rows(tiny_llava_path):
    m = B.script_yes_no(load_mllm(str(tiny_llava_path), device="cpu", dtype="float32"), base_side=336)
    img, disc = B.make_image((1024, 768))
    out = {}
    for meth in B.methods(n_steps=(1, 2), depths=(1,), which=("vanilla", "focus", "zoomeye")):
        out[meth.name] = B.measure(m, meth, img, disc, "cpu", flops=True)
        out[meth.name].update(model="tiny", image="1K")
    prompt_len = m.build_inputs([[img]], [m.prompt(B.QUESTION, 1)])["input_ids"].shape[1]
    return out, prompt_len


def test_vanilla_counts_one_prompt_and_its_decode_steps(rows):
    r, prompt_len = rows
    v = r["vanilla"]
    assert v["search_fp"] == 0 and v["model_calls"] == 1
    assert v["tokens"] == prompt_len + v["lm_forwards"] - 1          # prefill + one token per decode step
    assert v["flops"] > 0 and v["mem_total_gb"] > 0


def test_focus_fps_follow_the_paper_accounting_on_the_scripted_path(rows):
    r, _ = rows
    assert r["FOCUS Steps-1 w/o overrun"]["search_fp"] == 1            # map pass only, nothing to rank (D12)
    assert r["FOCUS Steps-2"]["search_fp"] == 1 + 2                     # map + 2 crops, the first says Yes
    assert r["FOCUS Steps-2 w/o overrun"]["search_fp"] == 3
    f = r["FOCUS Steps-2"]
    # targets (+ the prefix forward on first use) + relevance + ONE batched verification + answer
    assert f["model_calls"] in (4, 5)
    assert f["flops"] > r["vanilla"]["flops"] and f["tokens"] > r["vanilla"]["tokens"]
    assert set(f["steps"]) >= {"targets", "relevance", "verify", "answer"}
    assert r["ZoomEye Depth-1"]["search_fp"] > 0


def test_table_reports_ratios_to_the_vanilla_of_the_same_block(rows):
    r, _ = rows
    md = B.table(list(r.values()))
    lines = {ln.split(" | ")[2]: ln.split(" | ") for ln in md.splitlines()[2:]}
    assert lines["vanilla"][4] == "1.0x"
    f = r["FOCUS Steps-2"]
    assert lines["FOCUS Steps-2"][4] == f"{f['time_s'] / r['vanilla']['time_s']:.1f}x"
    assert lines["FOCUS Steps-2"][15] == f"{f['flops'] / r['vanilla']['flops']:.1f}x"
