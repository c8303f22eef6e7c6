"""Reporting for the notebooks: our runs and the paper's reported numbers, side by side.

The notebooks (notebooks/*.ipynb) stay thin; everything they reuse lives here:

  load_paper_results()      data/paper_results.csv (the paper's numbers as data; columns in data/README.md)
  Session                   one notebook's model, data, results dir and figures dir; `run()` = runner.evaluate
                            (resumes from the results dir) -> long rows in the paper's schema
  run_rows / collect_results  results (records, meta) -> long rows: table-independent, one metric per row
  side_by_side              long rows of both sources -> a wide table, "paper (...)" next to "ours (...)"
  pareto_plot, pareto_front Fig. 3 (accuracy vs search FPs)
  save_table / save_figure  CSV + markdown + LaTeX / PNG + PDF
  qualitative_figure        Fig. 5 / 8-10 style panels of one sample
  NOTEBOOKS, smoke_parameters, execute_notebook, ensure_kernel   headless execution with papermill

Long-row schema (paper and ours alike): table, model, method, setting, n_steps, scheme, benchmark, category,
metric, value, source, note. `source` is "reported" in the CSV and becomes a display label
("paper (LLaVA-1.5-7B)" / "ours (tiny-llava-1.5, random weights)") in every table and plot.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parent.parent
PAPER_CSV = REPO / "data" / "paper_results.csv"
COLUMNS = ["table", "model", "method", "setting", "n_steps", "scheme", "benchmark", "category", "metric", "value",
           "source", "note"]
METRICS = ("acc", "fp", "recall", "time_s", "mem_gb", "tflops", "calls")

# our adapter family -> the paper's model id in paper_results.csv
FAMILY_TO_PAPER = {"llava-1.5": "llava-1.5-7b", "llava-onevision": "llava-ov-7b", "qwen2.5-vl": "qwen2.5-vl-7b"}
PAPER_MODEL_NAMES = {"llava-1.5-7b": "LLaVA-1.5-7B", "llava-ov-7b": "LLaVA-OV-7B", "qwen2.5-vl-7b": "Qwen2.5-VL-7B",
                     "seal": "SEAL", "-": "-"}
METHOD_NAMES = {"vanilla": "vanilla", "focus": "FOCUS", "zoomeye": "ZoomEye", "vicrop": "ViCrop", "dc2": "DC²",
                "seal": "SEAL", "random": "random guess"}
BENCH_NAMES = {"vstar": "V*Bench", "hrbench_4k": "HRBench-4K", "hrbench_8k": "HRBench-8K",
               "mme_rw_lite": "MME-RealWorld-Lite", "aokvqa": "A-OKVQA", "gqa": "GQA"}

NOTEBOOKS = ["00_explore", "01_main_results", "02_ablations", "03_hyperparameters", "04_efficiency",
             "05_qualitative"]


# ------------------------------------------------------------------------------------------------
# the paper's numbers


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


# ------------------------------------------------------------------------------------------------
# our results -> long rows


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
    from .metrics import partial_note
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
    from . import metrics as M
    from .benchmarks import get_spec
    keys = aggregate_by or get_spec(meta["benchmark"]).aggregate
    rec = M.recall(records) if any(r.get("gt_boxes") for r in records) else None
    return summary_rows(M.aggregate(records, keys), rec, meta, source, table, setting)


def collect_results(results_dir: str | Path, source: str | None = None):
    """Every finished run under `results_dir` (each `<stem>.meta.json` + `<stem>.jsonl`) as long rows."""
    import pandas as pd

    from .runner import read_records, unique_records
    rows = []
    for meta_path in sorted(Path(results_dir).rglob("*.meta.json")):
        jsonl = meta_path.with_name(meta_path.name[:-len(".meta.json")] + ".jsonl")
        records = unique_records(read_records(jsonl))  # each id once, the last record (decisions D-RB1)
        if not records:
            continue
        meta = json.loads(meta_path.read_text())
        rows += run_rows(records, meta, source or ours_label(meta.get("model", "")))
    return pd.DataFrame(rows, columns=COLUMNS + ["n"])


# ------------------------------------------------------------------------------------------------
# tables


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


def save_figure(fig, out_dir: str | Path, name: str, dpi: int = 130) -> dict:
    """Write `fig` as <name>.png and <name>.pdf under `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / f"{name}.png", "pdf": out_dir / f"{name}.pdf"}
    fig.savefig(paths["png"], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths["pdf"], bbox_inches="tight")
    return paths


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


# ------------------------------------------------------------------------------------------------
# plots


def pareto_front(points: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats (cost <= and acc >=, one strictly)."""
    pts = list(points)
    keep = []
    for i, (c, a) in enumerate(pts):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(pts) if j != i)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: pts[i][0])


def point_label(row) -> str:
    m = METHOD_NAMES.get(row["method"], row["method"])
    n = row.get("n_steps")
    s = row.get("setting", "-")
    if row["method"] == "focus" and n is not None and not (isinstance(n, float) and math.isnan(n)):
        return f"{m} n={int(n)}" + (" no-ov" if "no-overrun" in str(s) else "")
    return m if s in ("-", "", None) else f"{m} {s}"


def pareto_points(long_df, benchmark: str, category: str = "overall"):
    """(fp, acc) per run of `benchmark`: wide rows with method, setting, n_steps, source, fp, acc.
    Runs without search FPs (vanilla) get fp 0."""
    import pandas as pd
    d = long_df[(long_df["benchmark"] == benchmark) & (long_df["category"] == category)
                & long_df["metric"].isin(["acc", "fp"])].copy()
    if d.empty:
        return pd.DataFrame(columns=["method", "setting", "n_steps", "scheme", "source", "acc", "fp"])
    d["n_steps"] = d["n_steps"].astype(object).where(d["n_steps"].notna(), -1)
    w = d.pivot_table(index=["source", "method", "setting", "n_steps", "scheme"], columns="metric", values="value",
                      aggfunc="first").reset_index()
    if "fp" not in w:
        w["fp"] = float("nan")
    w["fp"] = w["fp"].fillna(0.0)
    w["n_steps"] = w["n_steps"].where(w["n_steps"] != -1, None)
    return w.dropna(subset=["acc"])


def pareto_plot(long_df, benchmarks: Sequence[str], title: str = "", annotate: bool = True):
    """Fig. 3: accuracy vs search FPs per benchmark, hue = method, marker = source (paper / ours); each
    source's Pareto front drawn as a step line."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    n = max(1, len(benchmarks))
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), squeeze=False)
    for ax, bench in zip(axes[0], benchmarks):
        pts = pareto_points(long_df, bench)
        if pts.empty:
            ax.set_title(f"{BENCH_NAMES.get(bench, bench)}: no data")
            continue
        pts["method_name"] = [METHOD_NAMES.get(m, m) for m in pts["method"]]
        sns.scatterplot(data=pts, x="fp", y="acc", hue="method_name", style="source", s=70, ax=ax)
        for src, g in pts.groupby("source"):
            front = g.iloc[pareto_front(list(zip(g["fp"], g["acc"])))]
            ax.step(front["fp"], front["acc"], where="post", lw=1, alpha=0.5,
                    ls="--" if str(src).startswith("paper") else "-", color="gray")
        if annotate:
            for _, r in pts.iterrows():
                ax.annotate(point_label(r), (r["fp"], r["acc"]), fontsize=6, alpha=0.7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("search forward passes [#]")
        ax.set_ylabel("accuracy [%]")
        ax.set_title(BENCH_NAMES.get(bench, bench))
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def qualitative_figure(sample, image, trace, vanilla_pred: str | None, title: str = ""):
    """Fig. 5 / 8-10 panels for one sample: original (GT boxes), relevance map(s) with ROIs, the final
    input, and the answers with and without FOCUS."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .viz import map_to_image
    targets = trace.per_target or [None]
    fig, axes = plt.subplots(1, 2 + len(targets), figsize=(4.2 * (2 + len(targets)), 4.4), squeeze=False)
    ax = axes[0][0]
    ax.imshow(image)
    for b in sample.gt_boxes or []:
        ax.add_patch(Rectangle((b[0], b[1]), b[2], b[3], fill=False, ec="lime", lw=2))
    ax.set_title("original" + (" (GT box green)" if sample.gt_boxes else ""), fontsize=9)
    for k, t in enumerate(targets):
        ax = axes[0][1 + k]
        ax.imshow(image)
        if t is not None:
            heat = map_to_image(t.map, t.layout.cell_boxes, image.size)
            ax.imshow(heat, cmap="jet", alpha=0.5, extent=(0, image.width, image.height, 0))
            if t.best is not None:
                x0, y0, x1, y1 = t.rois[t.best].box
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=2.5))
            ax.set_title(f"relevance map: {t.target!r}\nselected ROI red", fontsize=9)
    ax = axes[0][-1]
    if trace.final_images:
        ax.imshow(trace.final_images[0])
    ok = lambda p: "✓" if p is not None and str(p).strip() == str(sample.answer).strip() else "✗"  # noqa: E731
    ax.set_title(f"final input ({trace.final_mode})", fontsize=9)
    for a in axes[0]:
        a.set_axis_off()
    q = sample.question.splitlines()[0][:90]
    fig.suptitle((title + "\n" if title else "") + f"Q: {q} | label {sample.answer} | "
                 f"w/o FOCUS: {str(vanilla_pred)[:20]!r} {ok(vanilla_pred)} | "
                 f"w/ FOCUS: {str(trace.answer)[:20]!r} {ok(trace.answer)}", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# one notebook's session


class Session:
    """Model, data, results and figures of one notebook run.

    model: hub id / local path / "tiny" (the embedded default, cli.embedded_default); data: None (the hub),
    "synthetic" (focuslib.synthetic_benchmarks, written under results_dir/_data), or a directory holding
    one sub-directory per benchmark name. smoke: force the embedded default model and synthetic data.
    """

    def __init__(self, model: str = "tiny", *, results_dir="results", figures_dir="figures", data=None,
                 limit: int | None = None, device: str | None = None, dtype: str = "auto", smoke: bool = False,
                 synthetic_n: int = 8, progress: bool = False):
        if smoke:
            model, data = "tiny", "synthetic"
            import torch
            torch.set_num_threads(1)   # smoke runs share a small CPU (tests run notebooks in parallel)
        self.model_arg, self.data, self.limit, self.smoke = model, data, limit, smoke
        self.device, self.dtype, self.synthetic_n, self.progress = device, dtype, synthetic_n, progress
        self.results_dir, self.figures_dir = Path(results_dir), Path(figures_dir)
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._mllm = None
        self.rows: list[dict] = []

    # -- model
    @property
    def model_path(self) -> str:
        if self.model_arg in ("tiny", "random-tiny"):  # the same aliases as the command line
            from .cli import resolve_model
            return resolve_model(self.model_arg)
        from .models import HUB_IDS
        return HUB_IDS.get(self.model_arg, self.model_arg)

    @property
    def mllm(self):
        if self._mllm is None:
            import os
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            from .models import load_mllm
            self._mllm = load_mllm(self.model_path, device=self.device, dtype=self.dtype)
        return self._mllm

    @property
    def family(self) -> str:
        return self.mllm.family

    @property
    def paper_model(self) -> str:
        return FAMILY_TO_PAPER.get(self.family, "llava-1.5-7b")

    @property
    def label(self) -> str:
        return ours_label(self.model_path)

    def describe(self) -> str:
        return (f"model {self.model_path} ({self.family}); data: {self.data or 'hub'}; limit {self.limit}; "
                f"results -> {self.results_dir}; figures -> {self.figures_dir}; label {self.label!r}")

    # -- data
    def source(self, benchmark: str):
        from .benchmarks import get_spec
        name = get_spec(benchmark).name
        if self.data is None:
            return None
        if self.data == "synthetic":
            from .synthetic_benchmarks import ensure_synthetic  # atomic: a kill never leaves half a benchmark
            return ensure_synthetic(name, self.results_dir / "_data" / name, n=self.synthetic_n)
        return Path(self.data) / name

    def samples(self, benchmark: str, limit: int | None = None):
        from .benchmarks import load_benchmark
        return load_benchmark(benchmark, source=self.source(benchmark), limit=limit or self.limit)

    # -- runs
    def run(self, benchmark: str, method: str = "focus", n_steps: int = 8, *, table: str = "",
            setting: str | None = None, subdir: str | None = None, **opts) -> list[dict]:
        """runner.evaluate (resuming from the results dir) -> long rows (also kept in `self.rows`).
        subdir: a separate results directory for runs whose settings the runner's file name does not
        tell apart (hyperparameter overrides, FLOP measurements)."""
        from .runner import evaluate
        out = self.results_dir / subdir if subdir else self.results_dir
        res = evaluate(self.mllm, benchmark, method, n_steps, self.limit, out, source=self.source(benchmark),
                       progress=self.progress, print_table=False, **opts)
        meta = json.loads((out / f"{res['stem']}.meta.json").read_text())
        rows = summary_rows(res["summary"], res["recall"], meta, self.label, table, setting)
        for r in rows:
            r["model"] = Path(self.model_path).name
        self.rows += rows
        self.last = res
        return rows

    def ours(self, table: str | None = None):
        import pandas as pd
        df = pd.DataFrame(self.rows, columns=COLUMNS + ["n"])
        return df if table is None else df[df["table"] == table]

    def paper(self, table, model: str | Sequence[str] | None = "auto"):
        """Paper rows of `table` (display-labelled), for this session's paper model by default."""
        if model == "auto":
            model = self.paper_model
        return paper_rows(load_paper_results(table=table, model=model))

    def both(self, table, model="auto", **filters):
        """Paper rows + ours for `table`, filtered by column == value (value may be a list)."""
        import pandas as pd
        df = pd.concat([self.paper(table, model), self.ours(table)], ignore_index=True)
        for k, v in filters.items():
            df = df[df[k].isin(v if isinstance(v, (list, tuple, set)) else [v])]
        return df

    def focus(self, benchmark: str | None = None, n_steps: int = 8, **overrides):
        """A Focus with the Tab. 7 preset of `benchmark` (as the runner builds it) plus overrides."""
        from .benchmarks import get_spec
        from .config import preset
        from .search import Focus
        bench = get_spec(benchmark).preset if benchmark else None
        return Focus(self.mllm, preset(self.family, bench, n_steps=n_steps, **overrides))

    def explore(self, image, question: str, n_steps: int = 8, k: int | None = None, s_max: int | None = None,
                layers: tuple[int, int] | None = None, benchmark: str | None = "vstar", targets=None):
        """One FOCUS answer with the explorer's knobs -> (trace, figure, ROI table). `layers` is a half-open
        range of this model's own decoder layers."""
        from .images import load_image
        from .viz import plot_trace
        over = {}
        if k is not None:
            over["k"] = int(k)
        if s_max is not None:
            over["s_max"] = int(s_max)
        if layers is not None:
            over.update(layers=(int(layers[0]), int(layers[1])), ref_layers=self.mllm.num_layers)
        image = load_image(image)
        trace = self.focus(benchmark, n_steps, **over).answer(image, question, targets=targets)
        fig = plot_trace(trace, image, title=f"{self.label}\n{question.splitlines()[0][:80]} -> {trace.answer!r} "
                                              f"(search FPs {trace.search_fp})")
        return trace, fig, rois_table(trace)

    def save_table(self, df, name: str, caption: str = "") -> dict:
        return save_table(df, self.figures_dir, name, caption)

    def save_figure(self, fig, name: str) -> dict:
        return save_figure(fig, self.figures_dir, name)


# ------------------------------------------------------------------------------------------------
# executing the notebooks (make figures, tests)


# ------------------------------------------------------------------------------------------------
# the cost benchmark (benchmarks/bench_methods.py, issue 18)

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


def scaling_plot(bench, metric: str = "time_s_x"):
    """Cost vs image size (one line per method) and FOCUS cost vs n_steps (one line per image size)."""
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, g in bench.groupby("method", sort=False):
        if "w/o" in name:
            continue
        g = g.sort_values("pixels")
        a.plot(g["pixels"] / 1e6, g[metric], marker="o", label=name)
    a.set_xscale("log"), a.set_xlabel("image [Mpx]"), a.set_ylabel(metric)
    a.legend(fontsize=6)
    f = bench[bench["method"].str.match(r"FOCUS Steps-\d+$")].copy()
    f["n_steps"] = f["method"].str.extract(r"(\d+)$")[0].astype(int)
    for size, g in f.groupby("size"):
        g = g.sort_values("n_steps")
        b.plot(g["n_steps"], g[metric], marker="o", label=size)
    b.set_xlabel("FOCUS n_steps"), b.set_ylabel(metric), b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def smoke_parameters(results_dir: str | Path, figures_dir: str | Path) -> dict:
    """papermill parameters of the smoke mode: the embedded default model, synthetic data, a few samples."""
    return {"smoke": True, "model": "tiny", "device": "cpu", "dtype": "float32", "limit": 2,
            "n_steps": [1, 2], "results_dir": str(results_dir), "figures_dir": str(figures_dir)}


KERNEL_NAME = "focuslib"


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """A Jupyter kernelspec `name` that runs THIS interpreter (installed into sys.prefix if missing or stale)."""
    import subprocess
    import sys
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return name
    except NoSuchKernel:
        pass
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", name,
                    "--display-name", f"Python (focuslib, {Path(sys.prefix).name})"], check=True,
                   capture_output=True)
    return name


def execute_notebook(name: str, parameters: dict, output_dir: str | Path, notebooks_dir: str | Path | None = None,
                     kernel_name: str | None = None, cwd: str | Path | None = None):
    """Execute notebooks/<name>.ipynb headless with papermill; the executed copy goes to output_dir."""
    import papermill as pm
    nb_dir = Path(notebooks_dir or REPO / "notebooks")
    out = Path(output_dir) / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(str(nb_dir / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name=kernel_name or ensure_kernel(), cwd=str(cwd or nb_dir),
                               progress_bar=False)


def main(argv=None) -> int:
    """`python -m focuslib.report [--smoke] [--model M] [--only NB ...]`: run the notebooks (make figures)."""
    import argparse
    import time
    ap = argparse.ArgumentParser(prog="python -m focuslib.report", description=main.__doc__)
    ap.add_argument("--smoke", action="store_true", help="embedded default model, synthetic data, CPU, minutes")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--data", default=None, help="local benchmark root (one sub-directory per benchmark)")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--figures-dir", default=None)
    ap.add_argument("--only", nargs="+", default=None, help="notebook names (default: all six)")
    a = ap.parse_args(argv)
    results = Path(a.results_dir or (REPO / ("results/smoke" if a.smoke else "results")))
    figures = Path(a.figures_dir or (REPO / ("figures/smoke" if a.smoke else "figures")))
    params = smoke_parameters(results, figures) if a.smoke else {"results_dir": str(results),
                                                                  "figures_dir": str(figures)}
    for k in ("model", "device", "dtype", "limit", "data"):
        if getattr(a, k) is not None:
            params[k] = getattr(a, k)
    kernel = ensure_kernel()
    for nb in a.only or NOTEBOOKS:
        t0 = time.time()
        execute_notebook(nb, params, results / "notebooks", kernel_name=kernel)
        print(f"{nb}: {time.time() - t0:.0f} s -> {figures} (executed notebook: {results / 'notebooks' / nb}.ipynb)",
              flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# notebook parameters: papermill `-p NAME "[1, 2]"` hands the notebook a STRING; catch it in the first cell

_STR, _INT, _NUM = (str,), (int,), (int, float)
NOTEBOOK_PARAMETERS: dict[str, tuple[str, tuple, bool]] = {  # name -> (kind, element types, None allowed)
    "model": ("one", _STR, False), "benchmarks": ("list", _STR, False), "methods": ("list", _STR, False),
    "n_steps": ("list", _INT, False), "limit": ("one", _INT, True), "device": ("one", _STR, True),
    "dtype": ("one", _STR, False), "data": ("one", _STR, True), "results_dir": ("one", _STR, True),
    "figures_dir": ("one", _STR, True), "smoke": ("one", (bool,), False), "benchmark": ("one", _STR, False),
    "sample_index": ("one", _INT, False), "image_path": ("one", _STR, True), "question": ("one", _STR, True),
    "k": ("one", _INT, True), "s_max": ("one", _INT, True), "no_overrun_steps": ("list", _INT, False),
    "ablation_benchmarks": ("list", _STR, False), "ablation_n_steps": ("one", _INT, True),
    "hp_benchmark": ("one", _STR, False), "hp_n_steps": ("one", _INT, True), "n_samples": ("one", _INT, False),
    "seed": ("one", _INT, False), "s_max_values": ("list", _INT, False), "s_dist_values": ("list", _NUM, False),
    "nms_values": ("list", _NUM, False), "growth_rule": ("one", _STR, False), "eff_benchmark": ("one", _STR, False),
    "measure_flops": ("one", (bool,), False), "qual_benchmark": ("one", _STR, False),
    "n_examples": ("one", _INT, False),
}


def check_parameters(ns: dict) -> None:
    """Validate a notebook's papermill parameters in `ns` (its globals()) against NOTEBOOK_PARAMETERS.

    Raises TypeError naming the parameter, what it got and how to pass it (`-y "n_steps: [1, 2]"`); a
    string where a list is expected (papermill's `-p n_steps "[1, 2]"`) would otherwise iterate characters."""
    def ok(v, types):
        return isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
    for name, (kind, types, nullable) in NOTEBOOK_PARAMETERS.items():
        if name not in ns:
            continue
        v = ns[name]
        if v is None and nullable:
            continue
        want = " or ".join(t.__name__ for t in types)
        if kind == "list":
            if not isinstance(v, (list, tuple)) or not all(ok(x, types) for x in v):
                raise TypeError(f"parameter {name} must be a list of {want}, got {v!r} ({type(v).__name__}); "
                                f"pass lists as YAML: papermill ... -y \"{name}: [1, 2]\" (papermill -p gives a string)")
        elif not ok(v, types):
            raise TypeError(f"parameter {name} must be {want}{' or None' if nullable else ''}, got {v!r} "
                            f"({type(v).__name__}); papermill -p NAME VALUE parses numbers, True/False and None")


if __name__ == "__main__":
    raise SystemExit(main())
