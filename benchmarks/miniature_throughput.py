"""Seconds per training step of the miniature's stages C and I, per input side and torch threads (issue 16)

    python benchmarks/miniature_throughput.py            # -> the table in results_miniature_throughput.md

The recipe's budget is wall-clock (90 min on 2 cores), so a faster step is more training. Each row trains a fresh
model of run 14's recipe (stage C with the grounding term; stage I on full views from step 700) for `--steps`
steps through the trainer's own loader (miniature._Batches: batches made in `workers` processes while the model
trains) and reports the mean over the steps after a warm-up of 5. Each configuration runs in its own process, so
that torch's thread setting and the loader's workers start clean.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import torch

from focuslib.offline.synthetic import NOISE_KINDS   # the training scenes' pixel noise (Recipe.noise)

CONFIGS = [(96, "C", 2, 1, "normal"), (96, "C", 1, 1, "normal"), (192, "C", 2, 1, "normal"),
           (192, "C", 1, 1, "normal"), (192, "C", 2, 0, "normal"), (192, "I", 2, 1, "normal"),
           (192, "I", 1, 1, "normal"),
           (192, "C", 1, 1, "bytes"), (192, "C", 2, 1, "bytes"), (192, "I", 2, 1, "bytes"), (192, "I", 1, 1, "bytes")]


def measure(side: int, stage: str, threads: int, workers: int, steps: int, warm: int = 5,
            noise: str = "normal") -> float:
    """Mean seconds per optimizer step (loader wait included) over `steps` steps after `warm`."""
    from focuslib.offline import miniature as M
    from focuslib.offline import miniature3 as M3
    torch.set_num_threads(threads)
    r = replace(M3.Recipe3(), **M3.VARIANTS["run-14"], input_side=side, noise=noise)
    proc = M3.build_processor(side)
    tok = proc.tokenizer
    model = M3.build_model(r, tok)
    table, words = M3.phrase_table(model, tok), M3.word_table(model, tok)
    groups = M3._groups(model, stage, r)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    bar = SimpleNamespace(set_postfix=lambda **_: None)
    start = r.easy_steps + 100 if stage == "I" else 0   # stage I's full views, not its easy first steps
    r = replace(r, steps={**r.steps, stage: start + warm + steps})
    loader = torch.utils.data.DataLoader(M._Batches(r, stage, start, proc, M3._make), batch_size=None,
                                         num_workers=workers)
    model.train()
    t0, ema = None, None
    for i, (step, b) in enumerate(loader):
        if i == warm:
            t0 = time.time()
        if stage == "C":
            loss = M3.stage_c_loss(M3.projected_patches(model, b["pixel_values"]), b, table, words, r)
        else:
            loss = model(**M._inputs(model, stage, b, tok), labels=b["labels"]).loss
        ema = M.sgd_step(loss, opt, sched, params, ema, bar, [], stage, step)   # the trainer's step (clipping incl.)
    return (time.time() - t0) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rows", default=None, help="comma-separated row numbers of CONFIGS to run (default: all)")
    ap.add_argument("--one", nargs=5, type=int, default=None, help=argparse.SUPPRESS)   # side stage(0=C) threads workers noise
    a = ap.parse_args(argv)
    if a.one:
        side, stage, threads, workers, noise = a.one
        print(json.dumps(measure(side, "CI"[stage], threads, workers, a.steps, noise=NOISE_KINDS[noise])))
        return
    rows = [CONFIGS[int(i)] for i in a.rows.split(",")] if a.rows else CONFIGS
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"run 14's recipe, batch 32, {a.steps} steps after 5 of warm-up\n")
    print("| input side | stage | torch threads | loader workers | scene noise | s / step |\n|---|---|---|---|---|---|")
    for side, stage, threads, workers, noise in rows:
        out = subprocess.run([sys.executable, __file__, "--steps", str(a.steps), "--one", str(side),
                              str("CI".index(stage)), str(threads), str(workers), str(NOISE_KINDS.index(noise))],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"| {side} | {stage} | {threads} | {workers} | {noise} | {float(out):.3f} |", flush=True)


if __name__ == "__main__":
    main()
