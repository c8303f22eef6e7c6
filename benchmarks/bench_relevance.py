"""Speed and memory of `object_relevance` vs the literal N x N form of Fig. 7, at real model shapes.

    python benchmarks/bench_relevance.py [--device cuda] [--out benchmarks/results_relevance.md]

Shapes: LLaVA-1.5-7B (32 layers, 32 kv heads x 128, ~640 tokens, layers 14..32) and
LLaVA-OV-7B (28 layers, 4 kv heads x 128, ~7,300 tokens with anyres_max_9, layers 21..28).
Random values: this measures cost, not maps.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import torch

from focuslib.core.relevance import object_relevance

SHAPES = {  # name: (O, H_kv, N, D, n_visual, layers)
    "llava-1.5-7b": (32, 32, 640, 128, 576, range(14, 32)),
    "llava-ov-7b": (28, 4, 7300, 128, 6500, range(21, 28)),
    "qwen2.5-vl-7b@1M px": (28, 4, 1400, 128, 1300, range(14, 28)),
}


def naive(X, target, visual, layers):
    O, H, N, D = X.shape
    Xn = torch.nn.functional.normalize(X.float(), dim=-1).permute(0, 2, 1, 3).reshape(O, N, H * D)
    rel = torch.ones(len(visual), device=X.device)
    for t in target:
        pa = torch.zeros(len(visual), device=X.device)
        for layer in layers:
            S = Xn[layer] @ Xn[layer].T                                # the N x N matrix
            S = (S + torch.eye(N, device=X.device)) / 2
            S = S / S.sum(-1, keepdim=True)
            pa += S[t, visual]
        pa = pa.clamp_min(0)
        rel *= pa / pa.sum()
    return rel / rel.sum()


def measure(fn, device, reps=3):
    if device.startswith("cuda"):
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        tracemalloc.start()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = float("nan")  # torch CPU allocations are not visible to tracemalloc
        tracemalloc.stop()
    return (time.perf_counter() - t0) / reps, peak, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--out", default="benchmarks/results_relevance.md")
    ap.add_argument("--skip-naive-above", type=int, default=4000, help="N above which the N x N form is skipped on CPU")
    a = ap.parse_args()
    dt = getattr(torch, a.dtype)
    rows = ["| shape | device | s | ours [ms] | N x N [ms] | speed-up | ours extra mem [MiB] | N x N extra mem [MiB] | max rel. diff |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, (O, H, N, D, V, layers) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        X = (torch.randn(O, H, N, D, generator=g) + 0.3).to(a.device, dt)
        visual = torch.arange(5, 5 + V, device=a.device)
        for s in (1, 4):
            target = torch.arange(N - 10, N - 10 + s, device=a.device)
            t1, m1, r1 = measure(lambda: object_relevance(X, target, visual, layers), a.device)
            if a.device == "cpu" and N > a.skip_naive_above:
                t2 = m2 = diff = float("nan")
            else:
                t2, m2, r2 = measure(lambda: naive(X, target, visual, layers), a.device, reps=1)
                diff = float(((r1 - r2).abs() / r2.abs().clamp_min(1e-12)).max())
            rows.append(f"| {name} [{O},{H},{N},{D}] | {a.device} | {s} | {t1*1e3:.1f} | {t2*1e3:.1f} | "
                        f"{t2/t1:.1f}x | {m1:.1f} | {m2:.1f} | {diff:.1e} |")
            print(rows[-1], flush=True)
    hdr = (f"# object_relevance benchmark\n\n`python {' '.join(['benchmarks/bench_relevance.py', '--device', a.device])}`, "
           f"values in {a.dtype}, torch {torch.__version__}. CPU memory is not measured (nan).\n\n")
    Path(a.out).write_text(hdr + "\n".join(rows) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
