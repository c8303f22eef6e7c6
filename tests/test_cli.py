"""The `focus` command line: ask (with viz and JSON) and demo, on the tiny model."""
import json

import pytest

from PIL import Image

from focuslib.cli import main


def test_ask_prints_answer_boxes_and_counts(tiny_llava_path, tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.new("RGB", (640, 480), (10, 120, 200)).save(img)
    viz, js = tmp_path / "viz.png", tmp_path / "trace.json"
    rc = main(["ask", "--model", str(tiny_llava_path), "--image", str(img), "--question",
               "What is the color of the kite?", "--n-steps", "2", "--viz", str(viz), "--json", str(js),
               "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "RANDOM weights" in out and "answer:" in out and "search=" in out and "box=" in out
    assert Image.open(viz).size[0] > 500
    s = json.loads(js.read_text())
    assert s["targets"] == ["kite"] and s["search_fp"] >= 1


def test_ask_with_user_targets_and_bad_image(tiny_llava_path, tmp_path, capsys):
    rc = main(["ask", "--model", str(tiny_llava_path), "--image", str(tmp_path / "missing.png"),
               "--question", "x?", "--device", "cpu"])
    assert rc == 2 and "image file not found" in capsys.readouterr().err
    img = tmp_path / "img.png"
    Image.new("RGB", (300, 300)).save(img)
    rc = main(["ask", "--model", str(tiny_llava_path), "--image", str(img), "--question", "Where?",
               "--targets", "red car", "blue bus", "--n-steps", "1", "--no-overrun", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "['red car', 'blue bus'] (type-1, from user)" in out and "search=2 " in out


def test_demo_writes_visualization(tiny_llava_path, tmp_path, capsys):
    rc = main(["demo", "--model", str(tiny_llava_path), "--out", str(tmp_path), "--n-steps", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "answer:" in out and "ground truth" in out
    assert (tmp_path / "demo_focus.png").exists() and json.loads((tmp_path / "demo_trace.json").read_text())


def test_ask_benchmark_names_resolve_through_the_one_alias_table():
    """`focus ask --benchmark hrbench_4k` used the base preset (the preset's own alias table knew only `hrbench4k`);
    names and aliases now resolve in eval.benchmarks.ALIASES to the spec's preset group."""
    from focuslib.cli import preset_group
    from focuslib.core.config import preset
    from focuslib.images import FocusInputError
    assert [preset_group(b) for b in ("hrbench_4k", "HRBench8K", "v*", "synthetic", "mme", None)] == \
        ["hrbench", "hrbench", "vstar", "vstar", "mme", None]
    assert preset("llava-1.5", preset_group("hrbench_4k"), n_steps=3).k == 30   # Tab. 10's switch below 3 (D30)
    assert preset("llava-1.5", None, n_steps=3).k == 15
    with pytest.raises(FocusInputError, match="unknown preset benchmark"):
        preset("llava-1.5", "hrbench_4k")          # a benchmark name is not a preset group: loud, not the base
    with pytest.raises(FocusInputError, match="unknown --benchmark"):
        preset_group("nosuchbench")
