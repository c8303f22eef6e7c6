"""focuslib.report: the paper's numbers as data, our records -> tables, side-by-side layout, writers."""
import json
import math

import pandas as pd
import pytest

from focuslib import report


@pytest.fixture(scope="module")
def paper():
    return report.load_paper_results()


def _one(df, **kw):
    for k, v in kw.items():
        df = df[df[k] == v]
    assert len(df) == 1, (kw, df)
    return float(df["value"].iloc[0])


def test_paper_csv_schema_and_tables(paper):
    assert list(paper.columns) == report.COLUMNS
    assert set(paper["table"]) >= {"2", "3", "4", "5", "6", "10", "11", "12", "13", "14", "15"}
    assert set(paper["source"]) == {"reported"}
    acc = paper[paper["metric"].isin(["acc", "recall"])]["value"]
    assert acc.between(0, 100).all()
    assert not paper.duplicated(["table", "model", "method", "setting", "n_steps", "scheme", "benchmark", "category",
                                 "metric"]).any()


def test_paper_csv_spot_values(paper):
    # numbers quoted in the paper's text must match the transcribed tables
    t10 = paper[(paper["table"] == "10") & (paper["model"] == "llava-1.5-7b") & (paper["method"] == "focus")]
    assert _one(t10, setting="overrun", n_steps=8, benchmark="vstar", category="overall", metric="acc") == 72.77
    assert _one(t10, setting="overrun", n_steps=8, benchmark="vstar", category="overall", metric="fp") == 13.28
    assert _one(t10, setting="overrun", n_steps=8, benchmark="hrbench_4k", category="overall", metric="acc") == 51.75
    t2 = paper[paper["table"] == "2"]
    assert _one(t2, method="focus", category="Perception", metric="fp") == 7.71
    assert _one(t2, method="zoomeye", category="Reasoning", metric="acc") == 43.20
    assert _one(paper[paper["table"] == "12"], model="llava-1.5-7b", setting="k~U(10,50)", metric="acc_std") == 1.55
    assert _one(paper[paper["table"] == "3"], setting="no ranking", benchmark="vstar", metric="recall") == 38.48
    assert _one(paper[paper["table"] == "5"], method="focus", benchmark="hrbench_8k") == 76.25
    # ZoomEye and SEAL keep their own V*Bench scheme (logits matching), except Tab. 15's generate row
    ze = paper[(paper["method"] == "zoomeye") & (paper["benchmark"] == "vstar") & (paper["table"] != "15")]
    assert set(ze["scheme"]) == {"logits"}


def test_paper_overall_lies_between_its_categories(paper):
    """Tab. 10: an overall accuracy is a weighted mean of its two categories (catches transcription slips)."""
    t = paper[(paper["table"] == "10") & (paper["metric"] == "acc")].fillna({"n_steps": -1})
    for _, g in t.groupby(["model", "method", "setting", "n_steps", "benchmark"]):
        cats = g[g["category"] != "overall"]["value"]
        if len(cats) == 2:
            overall = float(g[g["category"] == "overall"]["value"].iloc[0])
            assert cats.min() - 0.01 <= overall <= cats.max() + 0.01, g


def test_labels(tmp_path):
    tiny = tmp_path / "tiny-llava-1.5"
    tiny.mkdir()
    (tiny / "focuslib.json").write_text(json.dumps({"random_weights": True}))
    assert report.ours_label(str(tiny)) == "ours (tiny-llava-1.5, random weights)"
    assert report.ours_label("llava-hf/llava-1.5-7b-hf") == "ours (llava-1.5-7b-hf)"
    mini = tmp_path / "miniature-llava-1.5"
    mini.mkdir()
    (mini / "focuslib.json").write_text(json.dumps({"random_weights": False, "trained": True}))
    assert report.ours_label(str(mini)) == "ours (miniature-llava-1.5, synthetic-trained)"
    assert report.paper_label("llava-ov-7b") == "paper (LLaVA-OV-7B)"


def test_setting_of():
    cfg = {"map_variant": "vv", "ranking": True, "overrun": True, "_layers_override": False, "layers": [14, 32]}
    assert report.setting_of({"method": "vanilla", "config": cfg}) == "-"
    # baselines are told apart by their options (two ZoomEye trees must not collapse into one row)
    assert report.setting_of({"method": "zoomeye", "config": {"_tag": "d1c2"}}) == "d1c2"
    assert report.setting_of({"method": "zoomeye", "config": {"_tag": "d2c4"}}) == "d2c4"
    assert report.setting_of({"method": "focus", "config": cfg}) == "overrun"
    assert report.setting_of({"method": "focus", "config": {**cfg, "overrun": False}}) == "no-overrun"
    assert report.setting_of({"method": "focus", "config": {**cfg, "map_variant": "random"}}) == "random map"
    assert report.setting_of({"method": "focus", "config": {**cfg, "map_variant": "kk"}}) == "K-K (w/o RoPE)"
    assert report.setting_of({"method": "focus", "config": {**cfg, "ranking": False}}) == "no ranking"
    assert report.setting_of({"method": "focus", "config": {**cfg, "_layers_override": True,
                                                            "layers": [0, 14]}}) == "layers 0-14"


def _records():
    mk = lambda i, ok, cat, cyc, fp: {"id": str(i), "correct": ok, "correct_lenient": ok, "search_fp": fp,  # noqa
                                      "groups": {"category": cat, "cycle": cyc}, "model_calls": {"total": fp + 2},
                                      "time_s": 1.0, "gt_boxes": [[0, 0, 10, 10]], "rois": [[0, 0, 10, 10]] if ok else []}
    return [mk(0, True, "FSP", "0", 4), mk(1, False, "FSP", "1", 6), mk(2, True, "FCP", "0", 8), mk(3, True, "FCP", "1", 2)]


def test_run_rows_from_records():
    meta = {"benchmark": "hrbench_4k", "method": "focus", "n_steps": 2, "scheme": "generate", "model": "m",
            "config": {"overrun": True}}
    df = pd.DataFrame(report.run_rows(_records(), meta, "ours (m)"))
    assert _one(df, category="overall", metric="acc") == 75.0
    assert _one(df, category="FSP", metric="acc") == 50.0
    assert _one(df, category="overall", metric="fp") == 5.0
    assert _one(df, category="overall", metric="recall") == 75.0
    assert not df["category"].isin(["0", "1"]).any()          # HR-Bench permutation index is not a category
    assert set(df["setting"]) == {"overrun"} and set(df["n_steps"]) == {2}
    van = pd.DataFrame(report.run_rows(_records(), {**meta, "method": "vanilla"}, "ours (m)"))
    assert "recall" not in set(van["metric"]) and van["n_steps"].isna().all()


def test_collect_results_reads_a_results_dir(tmp_path):
    meta = {"benchmark": "hrbench_4k", "method": "focus", "n_steps": 8, "scheme": "generate", "model": "m",
            "config": {"overrun": True}}
    (tmp_path / "x.meta.json").write_text(json.dumps(meta))
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()) + '{"torn')
    df = report.collect_results(tmp_path, source="ours")
    assert _one(df, category="overall", metric="acc") == 75.0


def test_side_by_side_puts_paper_next_to_ours():
    rows = [dict(method="focus", setting="overrun", n_steps=8, benchmark=b, metric="acc", value=v, source=s)
            for b, v, s in [("vstar", 72.77, "paper (X)"), ("vstar", 10.0, "ours (y)"), ("hrbench_4k", 51.75, "paper (X)"),
                            ("hrbench_4k", 20.0, "ours (y)")]]
    rows.append(dict(method="vanilla", setting="-", n_steps=None, benchmark="vstar", metric="acc", value=47.64,
                     source="paper (X)"))
    wide = report.side_by_side(pd.DataFrame(rows), ["method", "setting", "n_steps"], ["benchmark"])
    assert list(wide.columns) == [("vstar", "paper (X)"), ("vstar", "ours (y)"), ("hrbench_4k", "paper (X)"),
                                  ("hrbench_4k", "ours (y)")]
    assert wide.loc[("focus", "overrun", "8"), ("vstar", "ours (y)")] == 10.0
    assert wide.loc[("vanilla", "-", "-"), ("vstar", "paper (X)")] == 47.64
    assert math.isnan(wide.loc[("vanilla", "-", "-"), ("vstar", "ours (y)")])


def test_writers(tmp_path):
    wide = report.side_by_side(pd.DataFrame([dict(method="focus", benchmark="vstar", value=1.234, source="paper (X)"),
                                             dict(method="focus", benchmark="vstar", value=2.0, source="ours (y)")]),
                               ["method"], ["benchmark"])
    paths = report.save_table(wide, tmp_path, "t", caption="Tab. X")
    assert "vstar | paper (X)" in paths["csv"].read_text()
    md = paths["md"].read_text()
    assert md.startswith("Tab. X") and "| focus | 1.23 | 2.00 |" in md
    assert "\\begin{tabular}" in paths["tex"].read_text()
    import matplotlib.pyplot as plt
    fig, _ = plt.subplots()
    paths = report.save_figure(fig, tmp_path, "f")
    assert paths["png"].stat().st_size > 0 and paths["pdf"].read_bytes()[:4] == b"%PDF"


def test_pareto_front_and_plot(tmp_path):
    pts = [(1, 50), (2, 60), (3, 55), (4, 70), (4, 65), (0, 40)]
    assert report.pareto_front(pts) == [5, 0, 1, 3]
    long = pd.concat([report.paper_rows(report.load_paper_results(table="10", model="llava-1.5-7b")),
                      pd.DataFrame([dict(method="focus", setting="overrun", n_steps=1, benchmark="vstar",
                                         category="overall", metric=m, value=v, source="ours (y)", scheme="generate")
                                    for m, v in (("acc", 30.0), ("fp", 3.0))])])
    fig = report.pareto_plot(long, ["vstar", "hrbench_4k"])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "paper (LLaVA-1.5-7B)" in labels and "ours (y)" in labels


def test_pick_examples_prefers_focus_wins():
    foc = [{"id": "a", "correct": False}, {"id": "b", "correct": True}, {"id": "c", "correct": True},
           {"id": "d", "error": "x", "correct": False}]
    van = [{"id": "a", "correct": True}, {"id": "b", "correct": True}, {"id": "c", "correct": False}]
    assert report.pick_examples(foc, van, 3) == ["c", "b", "a"]


def test_parse_setting_and_sampled_summary():
    assert report.parse_setting("s_max=7") == ("s_max", 7.0, False)
    assert report.parse_setting("k~U(10,50)") == ("k", None, True)
    df = pd.DataFrame([dict(source="o", benchmark="vstar", category="overall", metric="acc", value=v, setting=f"k={k}")
                       for k, v in ((10, 60.0), (20, 70.0))])
    out = report.sampled_summary(df, "k~U(10,50)")
    assert _one(out, metric="acc") == 65.0 and _one(out, metric="acc_std") == 5.0
    assert set(out["setting"]) == {"k~U(10,50)"}


def test_smoke_cache_is_cleared_when_the_embedded_weights_change(tmp_path, monkeypatch):
    """make figures SMOKE=1 after a new miniature: results/smoke held the old model's records under the same name."""
    from focuslib.report import notebooks as NB
    import focuslib.models as models
    import focuslib.offline.embedded as emb
    monkeypatch.setattr(emb, "embedded_default", lambda: (str(tmp_path / "model"), None))
    fp = {"id": "sha256:aaaa"}
    monkeypatch.setattr(models, "weights_fingerprint", lambda path, cfg=None: fp["id"])
    res = tmp_path / "smoke"
    res.mkdir()
    (res / "old.jsonl").write_text("{}\n")   # a cache from before weights were recorded: cleared
    NB._match_smoke_cache(res)
    assert not (res / "old.jsonl").exists() and (res / ".weights").read_text() == "sha256:aaaa"
    (res / "new.jsonl").write_text("{}\n")   # same weights: kept
    NB._match_smoke_cache(res)
    assert (res / "new.jsonl").exists()
    fp["id"] = "sha256:bbbb"                 # the shipped model changed: cleared
    NB._match_smoke_cache(res)
    assert not (res / "new.jsonl").exists() and (res / ".weights").read_text() == "sha256:bbbb"
