"""Scorers and metrics on hand-made cases, with the paper's rules (A.2, sec. 4.3)."""
import math

import pytest
import torch

from focuslib.core.trace import Clock
from focuslib.eval import metrics as M


def test_exact_match_is_the_papers_rule():
    assert M.exact_match("A", "A") and M.exact_match(" A\n", "A")
    for wrong in ("The answer is A", "(A)", "A.", "a", "A) red", "", None):
        assert not M.exact_match(wrong, "A"), wrong


def test_lenient_letter_extraction():
    opts = ["red", "blue", "green", "white"]
    cases = {"A": "A", "(B)": "B", "C.": "C", "D) white": "D", "The answer is B": "B", "answer: (c)": "C",
             "Option D": "D", "blue": "B", "It is green.": "C", "red or blue": None, "Z": None, "": None}
    for pred, want in cases.items():
        assert M.extract_letter(pred, opts) == want, pred
    assert M.lenient_match("The answer is A", "A", opts) and not M.lenient_match("The answer is A", "B", opts)
    assert M.extract_letter("E", opts) is None  # only 4 options


def test_open_answers_gqa_normalisation():
    assert M.open_match("Yes.", "yes") and M.open_match("  Left ", "left") and M.open_match("T-shirt.", "t-shirt")
    assert not M.open_match("the left", "left") and not M.open_match("no", "yes")
    # lmms-eval's exact_match(ignore_case, ignore_punctuation) DELETES punctuation: a hyphen is not a space
    assert not M.open_match("tennis racket", "tennis-racket") and not M.open_match("t shirt", "t-shirt")
    assert M.open_match("tennisracket", "tennis-racket")
    assert M.normalize_open(" Don't, 'stop'! ") == "dont stop"
    s = M.score_answer("open", "It is red", "red")
    assert s == {"correct": False, "correct_lenient": True}
    assert M.score_answer("letter", "The answer is A", "A", ["x", "y"]) == {"correct": False, "correct_lenient": True}
    with pytest.raises(ValueError):
        M.score_answer("fuzzy", "a", "a")


def test_aggregate_per_category_counts_errors_as_wrong():
    recs = [
        {"correct": True, "correct_lenient": True, "groups": {"category": "FSP"}, "search_fp": 4, "time_s": 1.0,
         "model_calls": {"total": 6}},
        {"correct": False, "correct_lenient": True, "groups": {"category": "FSP"}, "search_fp": 2, "time_s": 3.0,
         "model_calls": {"total": 4}},
        {"correct": True, "correct_lenient": True, "groups": {"category": "FCP"}, "search_fp": 6, "time_s": 2.0,
         "model_calls": {"total": 8}, "flops": 3e12},
        {"correct": False, "groups": {"category": "FCP"}, "error": "FocusInputError: corrupt"},
    ]
    s = M.aggregate(recs, ["category"])
    assert list(s) == ["overall", "category=FCP", "category=FSP"]
    assert s["overall"]["n"] == 4 and s["overall"]["acc"] == 50.0 and s["overall"]["errors"] == 1
    assert s["overall"]["acc_lenient"] == 75.0 and s["overall"]["fp"] == 4.0 and s["overall"]["time_s"] == 2.0
    assert s["category=FSP"]["acc"] == 50.0 and s["category=FCP"]["acc"] == 50.0 and s["category=FCP"]["fp"] == 6
    assert s["category=FCP"]["tflops"] == 3.0 and s["overall"]["mem_gb"] is None
    t = M.format_table(s, "title")
    assert "category=FSP" in t and "50.00" in t.splitlines()[2]
    assert math.isnan(M.accuracy([]))


def test_mme_aggregation_keys():
    recs = [{"correct": c, "groups": {"subset": s, "category": f"{s}/{d}", "task": f"{s}/{d}/t"}}
            for c, s, d in [(1, "Perception", "OCR"), (0, "Perception", "MO"), (1, "Reasoning", "MO")]]
    s = M.aggregate(recs, ["subset", "category", "task"])
    assert s["subset=Perception"]["acc"] == 50.0 and s["subset=Reasoning"]["acc"] == 100.0
    assert s["category=Perception/MO"]["acc"] == 0.0 and s["task=Reasoning/MO/t"]["n"] == 1


def test_recall_overlap_is_intersection_over_gt_area():
    gt = [10, 10, 10, 10]  # x, y, w, h
    assert M.gt_overlap((0, 0, 100, 100), gt) == 1.0  # a huge ROI containing the GT box: IoU small, overlap 1
    assert M.gt_overlap((15, 0, 100, 100), gt) == 0.5
    assert M.gt_overlap((16, 0, 100, 100), gt) == pytest.approx(0.4)
    assert M.gt_overlap((30, 30, 40, 40), gt) == 0.0
    assert M.recall_hits([(15, 0, 100, 100)], [gt]) == [True]
    assert M.recall_hits([(16, 0, 100, 100), (0, 0, 5, 5)], [gt]) == [False]
    recs = [{"gt_boxes": [gt, [50, 50, 10, 10]], "rois": [(0, 0, 20, 20)]}, {"gt_boxes": [gt], "rois": []},
            {"gt_boxes": [gt], "error": "x"}, {"rois": [(0, 0, 1, 1)]}]
    assert M.recall(recs) == pytest.approx(100 / 3)  # 1 of 3 GT boxes; errors / no-GT records ignored


def test_examined_rois_from_trace_summary():
    rois = [{"box": [i, i, i + 5, i + 5]} for i in range(4)]
    summ = {"per_target": [{"verified": [0, 2], "best": 2, "rois": rois}, {"verified": [], "best": 1, "rois": rois},
                           {"verified": [], "best": None, "rois": []}]}
    assert M.examined_rois(summ) == [[0, 0, 5, 5], [2, 2, 7, 7], [1, 1, 6, 6]]


def test_fp_at_accuracy_interpolates():
    curve = [(4, 60.0), (1, 50.0), (10, 70.0)]
    assert M.fp_at_accuracy(curve, 60.0) == 4          # exact point
    assert M.fp_at_accuracy(curve, 65.0) == 7          # halfway between (4, 60) and (10, 70)
    assert M.fp_at_accuracy(curve, 40.0) == 1          # cheapest point already above
    assert M.fp_at_accuracy(curve, 75.0) is None


def test_relative_efficiency_a2():
    focus = [(1.47, 51.30), (4.86, 64.40), (13.28, 72.77)]
    zoom = [(12.50, 50.26), (44.54, 71.20), (48.63, 77.48)]
    r = M.relative_efficiency(focus, zoom)
    assert r["ref_acc"] == 72.77                       # min of the two best accuracies
    assert r["fp_ours"] == 13.28
    fp_ref = 44.54 + (72.77 - 71.20) * (48.63 - 44.54) / (77.48 - 71.20)
    assert r["fp_ref"] == pytest.approx(fp_ref) and r["ratio"] == pytest.approx(fp_ref / 13.28)


def test_flops_measured_by_flop_counter():
    lin = torch.nn.Linear(8, 16, bias=False)
    x = torch.randn(4, 8)
    out, f = M.count_flops(lin, x)
    assert out.shape == (4, 16) and f == 2 * 4 * 8 * 16


def test_clock_and_memory_on_cpu():
    clock = Clock("cpu")
    with clock("a") as t:
        sum(range(1000))
    first = t.s
    with clock("a"):
        sum(range(1000))
    assert first is not None and first >= 0 and clock.t["a"] >= first and set(clock.t) == {"a"}
    assert M.peak_memory_gb("cpu") is None


def _hr(correct_by_cycle):
    return [{"correct": ok, "groups": {"category": cat, "cycle": str(c)}}
            for c, items in correct_by_cycle.items() for ok, cat in items]


def test_hrbench_cycle_average_is_the_official_score():
    # complete: every cycle holds the same 2 questions -> mean of cycle means == plain mean
    full = _hr({c: [(c % 2 == 0, "FSP"), (True, "FCP")] for c in range(4)})
    s = M.aggregate(full, ["category", "cycle"])
    assert s["overall"]["acc"] == s["overall"]["acc_cycles"] == 75.0
    # partial: cycle 0 has 3 samples (1 right), cycle 1 has 1 (right): official = (33.3 + 100) / 2, plain = 50
    part = _hr({0: [(True, "FSP"), (False, "FSP"), (False, "FCP")], 1: [(True, "FSP")]})
    s = M.aggregate(part, ["category", "cycle"])
    assert s["overall"]["acc"] == 50.0
    assert s["overall"]["acc_cycles"] == pytest.approx((100 / 3 + 100) / 2)
    assert s["category=FSP"]["acc_cycles"] == pytest.approx((50 + 100) / 2)   # per category, then over cycles
    assert s["category=FCP"]["acc_cycles"] == 0.0
    assert "acc_cycles" in M.format_table(s) and "66.67" in M.format_table(s).splitlines()[1]
    assert M.aggregate([{"correct": True, "groups": {"category": "x"}}])["overall"]["acc_cycles"] is None
    assert "acc_cycles" not in M.format_table(M.aggregate([{"correct": True}]))


def test_partial_note():
    assert M.partial_note("hrbench_8k", 37) == "partial: 37 of 800 samples"
    assert M.partial_note("vstar", 191) == "" and M.partial_note("unknown", 3) == ""


def test_report_uses_the_cycle_mean_and_flags_a_partial_run():
    import pandas as pd

    from focuslib import report
    part = _hr({0: [(True, "FSP"), (False, "FSP"), (False, "FCP")], 1: [(True, "FSP")]})
    meta = {"benchmark": "hrbench_4k", "method": "vanilla", "scheme": "generate", "model": "m", "config": {}}
    df = pd.DataFrame(report.run_rows(part, meta, "ours (m)"))
    acc = df[(df.category == "overall") & (df.metric == "acc")]
    assert float(acc.value.iloc[0]) == pytest.approx((100 / 3 + 100) / 2)
    assert set(df.note) == {"partial: 4 of 800 samples"}
    paper = pd.DataFrame([dict(method="vanilla", setting="-", benchmark="hrbench_4k", metric="acc", value=60.0,
                               source="paper (X)", note="")])
    wide = report.side_by_side(pd.concat([paper, acc.assign(setting="-")]), ["method"], ["benchmark"])
    assert [c[-1] for c in wide.columns] == ["paper (X)", "ours (m) [partial: 4 of 800 samples]"]


def test_wilson_interval_matches_reference_values():
    # reference: the Wilson score formula as statsmodels' proportion_confint(k, n, method="wilson") gives it
    lo, hi = M.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(27.75, abs=0.01)
    lo, hi = M.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(23.66, abs=0.01), pytest.approx(76.34, abs=0.01))
    lo, hi = M.wilson_interval(838, 1000)
    assert lo < 83.8 < hi and hi - lo == pytest.approx(4.56, abs=0.02)   # about 2 x 1.96 x sqrt(.838 x .162 / 1000)
    assert all(math.isnan(x) for x in M.wilson_interval(0, 0))


def test_paired_difference_uses_the_per_question_differences():
    assert M.paired_difference([1] * 10, [0] * 10) == (100.0, 100.0, 100.0)   # no spread: the interval is a point
    d, lo, hi = M.paired_difference([1, 1, 0, 0], [0, 1, 0, 1])   # d = 1, 0, 0, -1: sd sqrt(2/3)
    assert d == 0.0 and hi == pytest.approx(-lo) and hi == pytest.approx(100 * 1.96 * math.sqrt(2 / 3) / 2)
    # pairing: the same 40-point gap is tighter when the questions B gets right A also gets right
    nested = M.paired_difference([1] * 60 + [0] * 40, [1] * 20 + [0] * 80)
    crossed = M.paired_difference([1] * 60 + [0] * 40, [0] * 80 + [1] * 20)
    assert nested[0] == crossed[0] == pytest.approx(40.0) and nested[2] - nested[1] < crossed[2] - crossed[1]
    with pytest.raises(ValueError, match="equally long"):
        M.paired_difference([1, 0], [1])
