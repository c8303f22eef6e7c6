"""The paper's numbers (data/paper_results.csv) and ours as long rows, and the side-by-side tables.

Long-row schema (paper and ours alike): table, model, method, setting, n_steps, scheme, benchmark, category,
metric, value, source, note. `source` is "reported" in the CSV and becomes a display label
("paper (LLaVA-1.5-7B)" / "ours (tiny-llava-1.5, random weights)") in every table and plot.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from focuslib.eval import metrics as M
from focuslib.eval.benchmarks import get_spec
from focuslib.eval.metrics import partial_note
from focuslib.eval.runner import read_records, unique_records
from focuslib.models.registry import FAMILIES, paper_model_names

REPO = Path(__file__).resolve().parents[2]


PAPER_CSV = REPO / "data" / "paper_results.csv"


COLUMNS = ["table", "model", "method", "setting", "n_steps", "scheme", "benchmark", "category", "metric", "value",
           "source", "note"]


METRICS = ("acc", "fp", "recall", "time_s", "mem_gb", "tflops", "calls")


# our adapter family -> the paper's model id in paper_results.csv, and how the paper names each model
FAMILY_TO_PAPER = {f.key: f.alias for f in FAMILIES.values()}
PAPER_MODEL_NAMES = {**paper_model_names(), "seal": "SEAL", "-": "-"}
METHOD_NAMES = {"vanilla": "vanilla", "focus": "FOCUS", "zoomeye": "ZoomEye", "vicrop": "ViCrop", "dc2": "DC²",
                "seal": "SEAL", "random": "random guess"}


BENCH_NAMES = {"vstar": "V*Bench", "hrbench_4k": "HRBench-4K", "hrbench_8k": "HRBench-8K",
               "mme_rw_lite": "MME-RealWorld-Lite", "aokvqa": "A-OKVQA", "gqa": "GQA"}


def load_paper_results(path: str | Path | None = None, table: str | Sequence[str] | None = None,
                       model: str | Sequence[str] | None = None):
    """data/paper_results.csv as a DataFrame (optionally filtered by table id(s) and paper model id(s))."""
    import pandas as pd
    df = pd.read_csv(path or PAPER_CSV, dtype={"table": str, "n_steps": "Int64"}, keep_default_na=False,
                     na_values={"n_steps": [""], "value": [""]})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path or PAPER_CSV}: missing column(s) {missing}; expected {COLUMNS}")
    if table is not None:
        df = df[df["table"].isin([table] if isinstance(table, str) else list(table))]
    if model is not None:
        df = df[df["model"].isin([model] if isinstance(model, str) else list(model))]
    return df.reset_index(drop=True)


def paper_label(model: str) -> str:
    return "paper" if model in ("-", "") else f"paper ({PAPER_MODEL_NAMES.get(model, model)})"


def paper_rows(df):
    """Paper rows with `source` replaced by its display label (per model)."""
    df = df.copy()
    df["source"] = [paper_label(m) for m in df["model"]]
    return df


def ours_label(model: str, random_weights: bool | None = None) -> str:
    """'ours (<model name>)', with ', random weights' for focuslib's tiny models (or when told) and
    ', synthetic-trained' for the miniature (focuslib.json says which)."""
    name = Path(str(model)).name or str(model)
    meta = {}
    f = Path(str(model)) / "focuslib.json"
    if f.is_file():
        meta = json.loads(f.read_text())
    if random_weights is None:
        random_weights = bool(meta.get("random_weights"))
    tag = ", random weights" if random_weights else ", synthetic-trained" if meta.get("trained") else ""
    return f"ours ({name}{tag})"


def setting_of(meta: dict) -> str:
    """Display setting of a run from its runner meta: the ablation(s) and overrun, as the CSV writes them."""
    c = meta.get("config") or {}
    if meta.get("method") != "focus":
        return c.get("_tag") or "-"   # baselines: their options (e.g. ZoomEye depth/children)
    parts = []
    if c.get("map_variant", "vv") == "random":
        parts.append("random map")
    elif c.get("map_variant", "vv") == "kk":
        parts.append("K-K (w/o RoPE)")
    if not c.get("ranking", True):
        parts.append("no ranking")
    if c.get("_layers_override"):
        parts.append("layers {}-{}".format(*c["layers"]))
    if meta.get("gt_targets"):
        parts.append("GT targets")
    if not parts or not c.get("overrun", True):
        parts.append("overrun" if c.get("overrun", True) else "no-overrun")
    return ", ".join(parts)


def _category(key: str) -> str:
    return "overall" if key == "overall" else key.split("=", 1)[1]


def summary_rows(summary: dict, recall: float | None, meta: dict, source: str, table: str = "",
                 setting: str | None = None) -> list[dict]:
    """metrics.aggregate's summary (+ recall) of one run -> long rows.

    HR-Bench: "acc" is the official mean of the per-cycle accuracies (`acc_cycles`, equal to the plain
    mean on a complete run). A run with fewer samples than the benchmark says so in `note`."""
    note = partial_note(meta.get("benchmark", ""), int(summary.get("overall", {}).get("n") or 0))
    base = {"table": table, "model": meta.get("model", ""), "method": meta.get("method", ""),
            "setting": setting or setting_of(meta),
            "n_steps": meta.get("n_steps") if meta.get("method") == "focus" else None,
            "scheme": meta.get("scheme", "generate"), "source": source, "note": note}
    rows = []
    for key, r in summary.items():
        if key.startswith("cycle="):   # HR-Bench permutation index: not a category of the paper
            continue
        for m in METRICS:
            v = r.get("acc_cycles") if m == "acc" and r.get("acc_cycles") is not None else r.get(m)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            rows.append({**base, "benchmark": meta.get("benchmark", ""), "category": _category(key), "metric": m,
                         "value": float(v), "n": r.get("n")})
    if recall is not None and not (isinstance(recall, float) and math.isnan(recall)) and meta.get("method") == "focus":
        n = summary.get("overall", {}).get("n")
        rows.append({**base, "benchmark": meta.get("benchmark", ""), "category": "overall", "metric": "recall",
                     "value": float(recall), "n": n})
    return rows


def run_rows(records: list[dict], meta: dict, source: str, table: str = "", setting: str | None = None,
             aggregate_by: Sequence[str] | None = None) -> list[dict]:
    """Records of one results file (runner JSONL) and its meta -> long rows."""
    keys = aggregate_by or get_spec(meta["benchmark"]).aggregate
    rec = M.recall(records) if any(r.get("gt_boxes") for r in records) else None
    return summary_rows(M.aggregate(records, keys), rec, meta, source, table, setting)


def collect_results(results_dir: str | Path, source: str | None = None):
    """Every finished run under `results_dir` (each `<stem>.meta.json` + `<stem>.jsonl`) as long rows."""
    import pandas as pd

    rows = []
    for meta_path in sorted(Path(results_dir).rglob("*.meta.json")):
        jsonl = meta_path.with_name(meta_path.name[:-len(".meta.json")] + ".jsonl")
        records = unique_records(read_records(jsonl))  # each id once, the last record (decisions D35)
        if not records:
            continue
        meta = json.loads(meta_path.read_text())
        rows += run_rows(records, meta, source or ours_label(meta.get("model", "")))
    return pd.DataFrame(rows, columns=COLUMNS + ["n"])


def side_by_side(df, index: Sequence[str], columns: Sequence[str] = ("benchmark",), value: str = "value",
                 decimals: int = 2):
    """Pivot long rows (paper and ours concatenated) into rows `index` x columns (`columns`..., source).

    Every source (e.g. "paper (LLaVA-1.5-7B)", "ours (...)") gets its own column under each column key, so
    the paper's number stands next to ours. Missing cells are empty (NaN). Rows of a partial run (note
    "partial: n of N samples") get that note in their source label, so the table says so."""
    import pandas as pd
    df = df.copy()
    if "note" in df.columns:
        part = df["note"].fillna("").astype(str).str.startswith("partial")
        df.loc[part, "source"] = df.loc[part, "source"].astype(str) + " [" + df.loc[part, "note"].astype(str) + "]"
    for c in list(index) + list(columns):
        df[c] = [("-" if v is None or (isinstance(v, float) and math.isnan(v)) or v is getattr(pd, "NA", None)
                  else str(int(v)) if isinstance(v, float) and v == int(v) else str(v)) for v in df[c]]
    wide = pd.pivot_table(df, index=list(index), columns=list(columns) + ["source"], values=value,
                          aggfunc="first", sort=False)
    wide = wide.round(decimals)
    # column keys in order of first appearance (the paper's order); under each key paper first, then ours
    keys = list(dict.fromkeys(c[:-1] for c in wide.columns))
    order = [c for k in keys for c in sorted((c for c in wide.columns if c[:-1] == k),
                                             key=lambda c: (not str(c[-1]).startswith("paper"), str(c[-1])))]
    return wide[order]


def flat_columns(wide):
    """MultiIndex columns -> 'a | b | source' strings (for CSV / markdown readers)."""
    out = wide.copy()
    if hasattr(out.columns, "levels"):
        out.columns = [" | ".join(str(x) for x in c) for c in out.columns]
    return out.reset_index()


def save_table(df, out_dir: str | Path, name: str, caption: str = "", float_format: str = "{:.2f}") -> dict:
    """Write `df` as <name>.csv, <name>.md and <name>.tex under `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = flat_columns(df) if (hasattr(df.columns, "levels") or df.index.name or
                                getattr(df.index, "names", [None])[0]) else df.reset_index(drop=True)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "tex": out_dir / f"{name}.tex"}
    flat.to_csv(paths["csv"], index=False)

    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else float_format.format(v)
        return str(v)
    cells = flat.map(fmt) if hasattr(flat, "map") else flat.applymap(fmt)
    md = (f"{caption}\n\n" if caption else "") + to_markdown(cells) + "\n"
    paths["md"].write_text(md)
    paths["tex"].write_text(cells.to_latex(index=False, caption=caption or None, escape=True))
    return paths


def to_markdown(df) -> str:
    """A GitHub markdown table of `df`'s cells as strings (no tabulate dependency)."""
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    head = [esc(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def measure_column(df):
    """Add `measure`: the metric, with the category appended unless it is 'overall' ('acc', 'acc Attr')."""
    df = df.copy()
    df["measure"] = [m if c == "overall" else f"{m} {c}" for m, c in zip(df["metric"], df["category"])]
    return df


def parse_setting(setting: str) -> tuple[str, float | None, bool]:
    """'s_max=7' -> ('s_max', 7.0, False); 'k~U(10,50)' -> ('k', None, True); other -> (setting, None, False)."""
    s = str(setting)
    if "~" in s:
        return s.split("~", 1)[0], None, True
    if "=" in s:
        k, v = s.split("=", 1)
        try:
            return k, float(v), False
        except ValueError:
            return k, None, False
    return s, None, False


def sampled_summary(df, setting: str):
    """Rows of several sampled runs (same metric) -> mean as `metric`, std as `metric`_std, under `setting`."""
    import pandas as pd
    out = []
    for (src, bench, cat, metric), g in df.groupby(["source", "benchmark", "category", "metric"]):
        base = g.iloc[0].to_dict()
        base.update(setting=setting, category=cat)
        out.append({**base, "metric": metric, "value": float(g["value"].mean())})
        out.append({**base, "metric": f"{metric}_std", "value": float(g["value"].std(ddof=0))})
    return pd.DataFrame(out)


def pick_examples(focus_records: list[dict], vanilla_records: list[dict], k: int = 4) -> list[str]:
    """Sample ids for qualitative figures: FOCUS right and vanilla wrong first (Fig. 5), then FOCUS right,
    then FOCUS wrong (failure cases, Fig. 9 IV); errors never."""
    van = {r["id"]: bool(r.get("correct")) for r in vanilla_records}
    ok = [r for r in focus_records if not r.get("error")]
    tiers = [[r for r in ok if r.get("correct") and not van.get(r["id"], False)],
             [r for r in ok if r.get("correct") and van.get(r["id"], False)],
             [r for r in ok if not r.get("correct")]]
    out = []
    for tier in tiers:
        for r in tier:
            if len(out) < k and r["id"] not in out:
                out.append(r["id"])
    return out


def rois_table(trace):
    """The ROIs of a trace, one row per proposal (target, rank, box, anchor relevance, confidence, chosen)."""
    import pandas as pd
    rows = []
    for t in trace.per_target:
        for i, r in enumerate(t.rois):
            rows.append({"target": t.target, "rank": i, "box": tuple(r.box), "anchor_relevance": r.score,
                         "confidence": r.confidence, "verified": i in t.verified, "best": i == t.best})
    return pd.DataFrame(rows, columns=["target", "rank", "box", "anchor_relevance", "confidence", "verified", "best"])


BENCH_NUMERIC = {"time [s]": "time_s", "targets": "t_targets", "map+pass": "t_map_pass",
                 "verify/search": "t_search", "answer": "t_answer", "search FPs": "fp", "model calls": "calls",
                 "LLM forwards": "lm_forwards", "tokens": "tokens", "TFLOPs": "tflops", "peak mem [GiB]": "mem_gb",
                 "extra mem [GiB]": "extra_mem_gb"}


# bench method name -> (paper method, paper setting, n_steps) in data/paper_results.csv (Tab. 13 / 14)
BENCH_TO_PAPER = {"vanilla": ("vanilla", "-", None), "ViCrop rel-att-high": ("vicrop", "rel-att-high", None),
                  **{f"ZoomEye Depth-{d}": ("zoomeye", f"depth-{d} (4 crops)", None) for d in (1, 2, 5)},
                  **{f"FOCUS Steps-{n}": ("focus", "overrun", n) for n in (1, 2, 4, 8)},
                  **{f"FOCUS Steps-{n} w/o overrun": ("focus", "no-overrun", n) for n in (1, 2, 4, 8)}}


def read_bench_methods(paths) -> "pd.DataFrame":
    """Rows of the markdown tables bench_methods.py writes: one per (model, image, method), numbers parsed
    ('–' -> NaN), ratios to the same block's vanilla recomputed as `<metric>_x`; `file` = the table's name."""
    import pandas as pd
    rows = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        lines = [ln for ln in Path(p).read_text().splitlines() if ln.startswith("| ")]
        if not lines:
            continue
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        for ln in lines[1:]:
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if len(cells) != len(head) or cells[0] in ("model", "---"):
                continue
            r = {"file": Path(p).stem, "model": cells[0], "image": cells[1], "method": cells[2]}
            for h, c in zip(head, cells):
                if h in BENCH_NUMERIC:
                    try:
                        r[BENCH_NUMERIC[h]] = float(c)
                    except ValueError:
                        r[BENCH_NUMERIC[h]] = math.nan
            rows.append(r)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["size"] = df["image"].str.split().str[0]
    df["pixels"] = [math.prod(int(v) for v in im.split()[1].split("x")) for im in df["image"]]
    van = df[df["method"] == "vanilla"].set_index(["file", "model", "image"])
    for m in ("time_s", "tflops", "tokens", "extra_mem_gb"):
        base = [van[m].get((f, mo, im), math.nan) for f, mo, im in zip(df["file"], df["model"], df["image"])]
        df[m + "_x"] = df[m] / base
    return df


def bench_vs_paper(bench, paper, model: str = "llava-1.5-7b"):
    """Ours (bench rows) beside the paper's Tab. 13 / 14 for the same methods: FPs, time, TFLOPs, memory and
    time as a ratio to vanilla (ours: same run; paper: its vanilla 0.25 s etc.). Long rows in the paper schema."""
    import pandas as pd
    p = paper[(paper["model"] == model) & (paper["benchmark"] == "vstar") & (paper["category"] == "overall")]
    out = []
    p_van = p[(p["method"] == "vanilla") & (p["metric"] == "time_s")]["value"]
    for name, (meth, setting, n) in BENCH_TO_PAPER.items():
        sel = p[(p["method"] == meth) & (p["setting"] == setting)]
        if n is not None:
            sel = sel[pd.to_numeric(sel["n_steps"], errors="coerce") == n]
        for metric in ("fp", "time_s", "tflops", "mem_gb"):
            v = sel[sel["metric"] == metric]["value"]
            if len(v):
                out.append(dict(method=name, metric=metric, value=float(v.iloc[0]), source="paper (A100)"))
        t = sel[sel["metric"] == "time_s"]["value"]
        if len(t) and len(p_van):
            out.append(dict(method=name, metric="time_x", value=float(t.iloc[0]) / float(p_van.iloc[0]),
                            source="paper (A100)"))
        for _, r in bench[bench["method"] == name].iterrows():
            src = f"ours ({r['file']}, {r['size']})"
            for metric, col in (("fp", "fp"), ("time_s", "time_s"), ("tflops", "tflops"), ("mem_gb", "mem_gb"),
                                ("time_x", "time_s_x"), ("tflops_x", "tflops_x")):
                out.append(dict(method=name, metric=metric, value=r[col], source=src))
    df = pd.DataFrame(out)
    wide = df.pivot_table(index="method", columns=["metric", "source"], values="value", aggfunc="first",
                          sort=False).reindex([m for m in BENCH_TO_PAPER if m in set(df["method"])])
    wide.columns = [f"{m}: {s}" for m, s in wide.columns]
    return wide.reset_index()
