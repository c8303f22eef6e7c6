"""Accuracy, recall and cost metrics exactly as the paper computes them (A.2, C.4, sec. 4.3).

Accuracy (A.2): exact match, no post-processing -- "The answer is A" and "(A)" are WRONG when the
label is "A". Only surrounding whitespace is ignored (the adapters strip it, decisions.md D20).
A lenient letter-extraction variant is offered for diagnosis, never for the paper's numbers.
GQA's open answers: exact match after lowercasing and DELETING punctuation (lmms-eval's gqa task:
exact_match with ignore_case + ignore_punctuation; LLaVA-1.5's convert_gqa_for_eval strips a trailing
"." and lowercases), so "t-shirt" matches "t-shirt" and "T-shirt." but not "t shirt" (decisions D27).

HR-Bench (official scoring, VLMEvalKit report_acc_hrbench / lmms-eval hrbench_aggregate_results): each
question appears in 4 option permutations ("cycles"); the score is the mean over cycles of the per-cycle
accuracy. `aggregate` adds it as `acc_cycles` wherever records carry a "cycle" group; it equals `acc` on a
complete run and is the number to report for a partial one (`partial_note` says when a run is partial).

Recall (sec. 4.3): a GT box counts as found when one of the ROIs the search examined covers at least
50% of it (overlap = intersection / GT area, decisions.md D21).

Relative efficiency (A.2): FP_ref / FP_ours at the reference accuracy = min of the two methods' best
accuracies, each FP read off its (FP, accuracy) curve with linear interpolation.

Cost (C.4): FLOPs with torch.utils.flop_counter.FlopCounterMode, peak memory with
torch.cuda.max_memory_allocated() / 1024**3 (None on CPU), time with device synchronisation (focuslib.core.trace.Clock).
"""
from __future__ import annotations

import math
import re
import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import torch

# ------------------------------------------------------------------------------------------------
# answers


def exact_match(pred: str | None, gt: str) -> bool:
    """The paper's rule: the prediction must BE the label (surrounding whitespace ignored)."""
    return pred is not None and str(pred).strip() == str(gt).strip()


_LETTER_PATTERNS = [
    r"^\(?([A-J])\)?(?:[.:,)]|\s|$)",                        # "A", "(A)", "A.", "A) red", "A: red"
    r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\b\)?",  # "The answer is A", "Option (B)"
    r"\(([A-J])\)",                                           # "... (C) ..."
]


def extract_letter(pred: str | None, options: Sequence[str] = ()) -> str | None:
    """Lenient: the option letter a free-form answer refers to, or None.

    Tries, in order: a leading letter, "answer/option is X", a parenthesised letter, and finally the
    option text itself (case-insensitive, whole answer or unique mention).
    """
    if pred is None:
        return None
    s = str(pred).strip()
    n = len(options) if options else 10
    valid = "ABCDEFGHIJ"[:n]
    for pat in _LETTER_PATTERNS:
        m = re.search(pat, s, flags=re.IGNORECASE if "answer" in pat else 0)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    if options:
        low = normalize_open(s)
        for i, o in enumerate(options):
            if low == normalize_open(o):
                return valid[i]
        hits = [i for i, o in enumerate(options) if re.search(rf"\b{re.escape(normalize_open(o))}\b", low)]
        if len(hits) == 1:
            return valid[hits[0]]
    return None


def lenient_match(pred: str | None, gt: str, options: Sequence[str] = ()) -> bool:
    return extract_letter(pred, options) == str(gt).strip()


_DELETE_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_open(s: str | None) -> str:
    """Lowercase, every ASCII punctuation character DELETED (not spaced), surrounding whitespace stripped:
    lmms-eval's exact_match(ignore_case, ignore_punctuation) used by its gqa task (decisions D27)."""
    if s is None:
        return ""
    return str(s).lower().translate(_DELETE_PUNCT).strip()


def open_match(pred: str | None, gt: str) -> bool:
    return pred is not None and normalize_open(pred) == normalize_open(gt)


def score_answer(scoring: str, pred: str | None, gt: str, options: Sequence[str] = ()) -> dict:
    """{"correct": paper rule, "correct_lenient": diagnosis} for one answer."""
    if scoring == "letter":
        return {"correct": exact_match(pred, gt), "correct_lenient": lenient_match(pred, gt, options)}
    if scoring == "open":
        return {"correct": open_match(pred, gt), "correct_lenient": open_match(pred, gt)
                or normalize_open(gt) in normalize_open(pred).split()}
    raise ValueError(f"unknown scoring {scoring!r}; use 'letter' or 'open'")


# ------------------------------------------------------------------------------------------------
# aggregation


def accuracy(flags: Iterable[bool]) -> float:
    """Unweighted mean over all N samples, in percent (A.2). NaN for no samples."""
    flags = [bool(f) for f in flags]
    return 100.0 * sum(flags) / len(flags) if flags else float("nan")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval (in %) of a rate of k successes in n: small-sample safe (never outside 0-100,
    not empty at 0 or n). (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = 1.96) -> tuple[float, float, float]:
    """Accuracy of `a` minus accuracy of `b` on the SAME questions (in pp) with its 95% interval, from the
    per-question differences d_i = a_i - b_i in {-1, 0, 1} (normal approximation, sd with ddof 1): pairing
    removes the questions both get right or wrong, so it is tighter than two independent intervals."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_difference needs two equally long lists of >= 2 outcomes, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = z * sd / math.sqrt(n)
    return 100.0 * mean, 100.0 * (mean - half), 100.0 * (mean + half)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def aggregate(records: Sequence[dict], keys: Sequence[str] = ("category",)) -> dict:
    """Summary of runner records: overall and per value of each key in `record["groups"]`.

    Errors count as wrong (the sample is in the denominator) and are also counted separately.
    Returns {"overall": row, "<key>=<value>": row, ...}; a row has n, acc, acc_lenient, errors,
    fp (mean search FPs), calls (mean model calls), time_s, mem_gb (mean peak), tflops (mean), and
    acc_cycles (HR-Bench's mean of per-cycle accuracies, `cycle_accuracy`; None without cycles).
    """
    buckets: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        buckets["overall"].append(r)
        for k in keys:
            v = (r.get("groups") or {}).get(k)
            if v is not None:
                buckets[f"{k}={v}"].append(r)

    def row(rs):
        return {"n": len(rs), "acc": accuracy(r.get("correct", False) for r in rs),
                "acc_cycles": cycle_accuracy(rs),
                "acc_lenient": accuracy(r.get("correct_lenient", False) for r in rs),
                "errors": sum(1 for r in rs if r.get("error")),
                "fp": _mean(r.get("search_fp") for r in rs if not r.get("error")),
                "calls": _mean((r.get("model_calls") or {}).get("total") for r in rs if not r.get("error")),
                "time_s": _mean(r.get("time_s") for r in rs if not r.get("error")),
                "mem_gb": _mean(r.get("peak_mem_gb") for r in rs if not r.get("error")),
                "tflops": _mean(None if r.get("flops") is None else r["flops"] / 1e12 for r in rs
                                if not r.get("error"))}
    ordered = ["overall"] + sorted(k for k in buckets if k != "overall")
    return {k: row(buckets[k]) for k in ordered}


def cycle_accuracy(records: Sequence[dict]) -> float | None:
    """HR-Bench's official accuracy: per-cycle accuracy (records grouped by `groups["cycle"]`, the
    dataset's cycle_category), averaged over the cycles present. None if no record has a cycle.

    Equals `accuracy` when every cycle holds the same questions (a complete run); on a partial run the
    cycles differ in size and the two differ (VLMEvalKit vlmeval/dataset/utils/hrbench.py
    report_acc_hrbench; lmms-eval lmms_eval/tasks/hrbench/utils.py hrbench_aggregate_results)."""
    by_cycle: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        c = (r.get("groups") or {}).get("cycle")
        if c is not None:
            by_cycle[str(c)].append(bool(r.get("correct", False)))
    if not by_cycle:
        return None
    return sum(accuracy(v) for v in by_cycle.values()) / len(by_cycle)


# full sizes of the benchmarks (paper Tab. 8; A-OKVQA validation; GQA testdev-balanced), to flag partial runs
FULL_SIZES: dict[str, int] = {"vstar": 191, "hrbench_4k": 800, "hrbench_8k": 800, "mme_rw_lite": 1919,
                              "aokvqa": 1145, "gqa": 12578}


def partial_note(benchmark: str, n: int) -> str:
    """"partial: n of N samples" when a run covers fewer samples than the benchmark has, else ""."""
    full = FULL_SIZES.get(benchmark)
    return f"partial: {n} of {full} samples" if full is not None and n < full else ""


def format_table(summary: dict, title: str = "") -> str:
    """Plain-text table of `aggregate`'s output (`acc_cycles` only where some row has it)."""
    cols = ["n", "acc", "acc_lenient", "errors", "fp", "calls", "time_s", "mem_gb", "tflops"]
    if any(r.get("acc_cycles") is not None for r in summary.values()):
        cols.insert(2, "acc_cycles")
    w0 = max([len("group")] + [len(k) for k in summary]) + 2

    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = [title] if title else []
    lines.append("group".ljust(w0) + "".join(c.rjust(12) for c in cols))
    for k, r in summary.items():
        lines.append(k.ljust(w0) + "".join(fmt(r.get(c)).rjust(12) for c in cols))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# recall (V*Bench only)


def gt_overlap(roi_xyxy: Sequence[float], gt_xywh: Sequence[float]) -> float:
    """|ROI ∩ GT| / |GT| for an (x0, y0, x1, y1) ROI and an [x, y, w, h] GT box (decisions.md D21)."""
    gx0, gy0, gw, gh = map(float, gt_xywh)
    if gw <= 0 or gh <= 0:
        return 0.0
    x0, y0, x1, y1 = map(float, roi_xyxy)
    iw = max(0.0, min(x1, gx0 + gw) - max(x0, gx0))
    ih = max(0.0, min(y1, gy0 + gh) - max(y0, gy0))
    return iw * ih / (gw * gh)


def recall_hits(rois: Sequence[Sequence[float]], gt_boxes: Sequence[Sequence[float]],
                threshold: float = 0.5) -> list[bool]:
    """Per GT box: does one of `rois` cover >= threshold of it?"""
    return [any(gt_overlap(r, g) >= threshold for r in rois) for g in gt_boxes]


def examined_rois(summary: dict) -> list[list[float]]:
    """The ROIs a search examined, from a `Trace.summary()`: every verified ROI of every target, or the
    chosen one where nothing was verified (n_steps=1 without overrun, no-ranking ablation)."""
    out = []
    for t in summary.get("per_target", []):
        idx = list(t.get("verified") or [])
        if not idx and t.get("best") is not None:
            idx = [t["best"]]
        out += [t["rois"][i]["box"] for i in idx]
    return out


def recall(records: Sequence[dict], threshold: float = 0.5) -> float:
    """Recall in percent over all GT boxes of the records that have them (micro average, D21)."""
    hits = []
    for r in records:
        if r.get("gt_boxes") and not r.get("error"):
            hits += recall_hits(r.get("rois") or [], r["gt_boxes"], threshold)
    return accuracy(hits)


# ------------------------------------------------------------------------------------------------
# relative efficiency (A.2)


def fp_at_accuracy(curve: Sequence[tuple[float, float]], acc: float) -> float | None:
    """FPs a method needs to reach accuracy `acc` on its (FP, accuracy) curve: the exact FP of a
    point with that accuracy, else linear interpolation between the two points (in FP order) where
    the curve first crosses it. None if never reached. The cheapest point already above it gives
    its own FP (no extrapolation below measured budgets)."""
    pts = sorted((float(f), float(a)) for f, a in curve)
    if not pts:
        return None
    for i, (f, a) in enumerate(pts):
        if a >= acc:
            if i == 0 or a == acc:
                return f
            f0, a0 = pts[i - 1]
            return f0 + (acc - a0) * (f - f0) / (a - a0)
    return None


def relative_efficiency(ours: Sequence[tuple[float, float]], ref: Sequence[tuple[float, float]]) -> dict:
    """A.2: reference accuracy = min(best of ours, best of ref); returns FP_ref / FP_ours there."""
    ref_acc = min(max(a for _, a in ours), max(a for _, a in ref))
    fo, fr = fp_at_accuracy(ours, ref_acc), fp_at_accuracy(ref, ref_acc)
    return {"ref_acc": ref_acc, "fp_ours": fo, "fp_ref": fr, "ratio": fr / fo if fo else float("inf")}


# ------------------------------------------------------------------------------------------------
# cost (C.4)


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda") and torch.cuda.is_available()


def reset_peak_memory(device) -> None:
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device) -> float | None:
    """torch.cuda.max_memory_allocated() / 1024**3 (A.2); None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 1024 ** 3 if _is_cuda(device) else None


def count_flops(fn: Callable, *args, **kwargs) -> tuple[object, int]:
    """(fn(*args, **kwargs), total FLOPs measured by torch.utils.flop_counter.FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        out = fn(*args, **kwargs)
    return out, int(fc.get_total_flops())


__all__ = ["exact_match", "extract_letter", "lenient_match", "normalize_open", "open_match", "score_answer",
           "accuracy", "aggregate", "cycle_accuracy", "FULL_SIZES", "partial_note", "format_table", "gt_overlap", "recall_hits", "examined_rois", "recall",
           "fp_at_accuracy", "relative_efficiency", "count_flops", "peak_memory_gb", "reset_peak_memory"]
