"""Figures: pictures of a FOCUS trace (relevance map over the image, ROIs with confidences, the final input),
Fig. 3's accuracy-vs-FP Pareto plot, Fig. 5 / 8-10 style qualitative panels, the cost scaling plot; save_figure."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from focuslib.report.tables import BENCH_NAMES, METHOD_NAMES  # noqa: E402


def map_to_image(rel_map: torch.Tensor, cell_boxes: torch.Tensor, size: tuple[int, int], scale: int = 4) -> np.ndarray:
    """Paint each cell's relevance over its pixel box; `[H/scale, W/scale]` float array in [0, 1]."""
    W, H = size
    out = np.zeros((max(1, H // scale), max(1, W // scale)), np.float32)
    m = rel_map.float()
    m = (m / m.max()).numpy() if float(m.max()) > 0 else m.numpy()
    b = (cell_boxes.numpy() / scale)
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            x0, y0, x1, y1 = b[r, c]
            if x1 > x0 and y1 > y0:
                out[int(y0):max(int(y0) + 1, int(np.ceil(y1))), int(x0):max(int(x0) + 1, int(np.ceil(x1)))] = m[r, c]
    return out


def plot_trace(trace, image: Image.Image, path: str | Path | None = None, max_rois: int = 8, title: str = ""):
    """One row per target: image + map overlay + ROIs (confidence labels, best in red); last panel:
    the final model input with the answer. Saves to `path` (PNG/PDF) if given; returns the figure."""
    n = max(1, len(trace.per_target))
    fig, axes = plt.subplots(n, 3, figsize=(13, 4.2 * n), squeeze=False)
    for row, t in enumerate(trace.per_target or [None]):
        ax0, ax1, ax2 = axes[row]
        ax0.imshow(image)
        ax0.set_title("input" if t is None else f"target: {t.target!r}")
        if t is not None:
            heat = map_to_image(t.map, t.layout.cell_boxes, image.size)
            ax1.imshow(image)
            ax1.imshow(heat, cmap="jet", alpha=0.5, extent=(0, image.width, image.height, 0))
            ax1.set_title(f"object relevance map {tuple(t.map.shape)}")
            shown = [i for i in range(len(t.rois)) if i < max_rois or i == t.best]
            for i in shown:
                r = t.rois[i]
                best = i == t.best
                x0, y0, x1, y1 = r.box
                ax1.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.5 if best else 1,
                                        ec="red" if best else "white"))
                label = f"#{i}" + (f" c={r.confidence:+.2f}" if r.confidence is not None else "")
                ax1.text(x0, y0, label, color="red" if best else "white", fontsize=7, va="bottom")
        for ax in (ax0, ax1):
            ax.set_axis_off()
        if row == 0 and trace.final_images:
            ax2.imshow(trace.final_images[0])
            ax2.set_title(f"final input ({trace.final_mode}) -> {trace.answer[:40]!r}", fontsize=9)
        ax2.set_axis_off()
    fig.suptitle(title or f"{trace.question.splitlines()[0][:90]}\nsearch FPs: {trace.search_fp}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def save_figure(fig, out_dir: str | Path, name: str, dpi: int = 130) -> dict:
    """Write `fig` as <name>.png and <name>.pdf under `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / f"{name}.png", "pdf": out_dir / f"{name}.pdf"}
    fig.savefig(paths["png"], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths["pdf"], bbox_inches="tight")
    return paths


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


def scaling_plot(bench, metric: str = "time_s_x"):
    """Cost vs image size (one line per method) and FOCUS cost vs n_steps (one line per image size)."""
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
