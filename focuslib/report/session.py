"""One notebook's session: model, data, results dir and figures dir; `run()` = runner.evaluate (resumes from the
results dir) -> long rows in the paper's schema (focuslib.report.tables)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from focuslib.core.config import preset
from focuslib.core.search import Focus
from focuslib.eval.benchmarks import get_spec, load_benchmark
from focuslib.eval.runner import evaluate
from focuslib.images import load_image
from focuslib.models import HUB_IDS, load_mllm
from focuslib.offline.embedded import resolve_model
from focuslib.offline.synthetic_benchmarks import ensure_synthetic
from focuslib.report.plots import plot_trace, save_figure
from focuslib.report.tables import (COLUMNS, FAMILY_TO_PAPER, load_paper_results, ours_label, paper_rows, rois_table,
                                    save_table, summary_rows)


class Session:
    """Model, data, results and figures of one notebook run.

    model: hub id / local path / "tiny" (the embedded default, offline.embedded.embedded_default); data: None (the hub),
    "synthetic" (focuslib.offline.synthetic_benchmarks, written under results_dir/_data), or a directory holding
    one sub-directory per benchmark name. smoke: force the embedded default model and synthetic data.
    """

    def __init__(self, model: str = "tiny", *, results_dir="results", figures_dir="figures", data=None,
                 limit: int | None = None, device: str | None = None, dtype: str = "auto", smoke: bool = False,
                 synthetic_n: int = 8, progress: bool = False):
        if smoke:
            model, data = "tiny", "synthetic"
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
            return resolve_model(self.model_arg)
        return HUB_IDS.get(self.model_arg, self.model_arg)

    @property
    def mllm(self):
        if self._mllm is None:
            import os
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
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
        name = get_spec(benchmark).name
        if self.data is None:
            return None
        if self.data == "synthetic":
            return ensure_synthetic(name, self.results_dir / "_data" / name, n=self.synthetic_n)
        return Path(self.data) / name

    def samples(self, benchmark: str, limit: int | None = None):
        return load_benchmark(benchmark, source=self.source(benchmark), limit=limit or self.limit)

    # -- runs
    def run(self, benchmark: str, method: str = "focus", n_steps: int = 8, *, table: str = "",
            setting: str | None = None, subdir: str | None = None, **opts) -> list[dict]:
        """runner.evaluate (resuming from the results dir) -> long rows (also kept in `self.rows`).
        subdir: a separate results directory for runs whose settings the runner's file name does not
        tell apart (hyperparameter overrides, FLOP measurements)."""
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
        bench = get_spec(benchmark).preset if benchmark else None
        return Focus(self.mllm, preset(self.family, bench, n_steps=n_steps, **overrides))

    def explore(self, image, question: str, n_steps: int = 8, k: int | None = None, s_max: int | None = None,
                layers: tuple[int, int] | None = None, benchmark: str | None = "vstar", targets=None):
        """One FOCUS answer with the explorer's knobs -> (trace, figure, ROI table). `layers` is a half-open
        range of this model's own decoder layers."""
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
