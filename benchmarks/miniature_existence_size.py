"""Existence on positives by the target's size in the view: where the miniature's Yes/No check fails (issue 16)

    python benchmarks/miniature_existence_size.py --models data/models/miniature-llava-1.5 .cache/.../final

The report's existence goal (>= 90% on ROI-sized crops) fails mostly on positives: a crop holding the target, asked
"Is there a {shape} in the image?". This asks that question on crops of 2, 3, 4 and 5 cells of the whole image's
12 x 12 grid around the target of each colour question (the report's crops are 3-5 cells) and tabulates the share
answered Yes by the target's size in the crop, in pixels of a 96 px view (the world's frame; a 192 px tower sees
twice as many), and by crop size. Scenes: synthetic.generate at seed 4242 (neither the report's 1000 nor the
probes' 7919). ~1.5 min a model on 2 cores at --n 400.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from focuslib.models import load_mllm
from focuslib.models.base import yes_confidence
from focuslib.offline import synthetic
from focuslib.offline.miniature_report import _crop_around

SEED = 4242
BINS = ((0, 6), (6, 8), (8, 11), (11, 16), (16, 1e9))
FRAME = 96   # the miniature world's frame: sizes are reported in px of a 96 px view whatever the tower's input


def _bin(px: float) -> str:
    lo, hi = next(b for b in BINS if b[0] <= px < b[1])
    return f">= {lo}" if hi > 1e8 else f"< {hi}" if lo == 0 else f"{lo}-{hi}"


def positives_by_size(model: str, n: int = 400, cells=(2, 3, 4, 5)) -> dict:
    """{row: (n, % Yes)} by the target's size in the crop (px of a 96 px view) and by crop size (cells)."""
    mllm = load_mllm(model)
    items = [i for i in synthetic.generate(n, seed=SEED) if i.category == "direct_attributes"]
    rng = np.random.default_rng(0)
    yes = defaultdict(list)
    for it in items:
        cell = max(it.image.size) / mllm.grid
        box = it.bboxes[0]
        for k in cells:
            crop, _ = _crop_around(it.image, box, cell * k, rng)
            said = float(yes_confidence(mllm.existence_logits([crop], it.target_objects[0]))[0]) > 0
            yes[f"target {_bin(max(box[2], box[3]) * FRAME / (cell * k))} px"].append(said)
            yes[f"crop {k} cells"].append(said)
    order = [f"target {_bin(lo)} px" for lo, _ in BINS] + [f"crop {k} cells" for k in cells]
    return {row: (len(yes[row]), round(100 * float(np.mean(yes[row])), 1)) for row in order if yes[row]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["data/models/miniature-llava-1.5"])
    ap.add_argument("--n", type=int, default=400, help="synthetic items (half are colour questions)")
    a = ap.parse_args(argv)
    tables = {m: positives_by_size(m, a.n) for m in a.models}
    rows = list(dict.fromkeys(r for t in tables.values() for r in t))
    print("| positives answered Yes | " + " | ".join(f"{m} (n, %)" for m in a.models) + " |")
    print("|---|" + "---|" * len(a.models))
    for row in rows:
        print(f"| {row} | " + " | ".join("{}, {}".format(*tables[m][row]) if row in tables[m] else ""
                                         for m in a.models) + " |")


if __name__ == "__main__":
    main()
