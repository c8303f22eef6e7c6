"""Where FOCUS loses accuracy on the miniature's colour questions (benchmarks/results_miniature.md, Update 4).

    python benchmarks/miniature_crops.py [--model data/models/miniature-llava-1.5] [--n 200]

On the report's held-out items (synthetic.generate(n, seed=1000), colour questions only): FOCUS n=8 split by
whether its chosen crops hold the target; a miss split by where the search lost the target (no verified ROI
overlaps it: the map's proposals; one holds it whole or overlaps it: the Yes/No ranking chose another crop); and
the answer on one crop of each fixed side holding the target at a random offset, split by whether a distractor
whose colour is one of the options lies in that crop; and, per target shape, the share of questions the ranking
lost. ~5 min for --n 800 (400 colour questions) on 2 cores.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from focuslib.core.config import preset
from focuslib.core.search import Focus
from focuslib.eval.metrics import exact_match
from focuslib.models import load_mllm
from focuslib.offline import miniature_report as R
from focuslib.offline import synthetic

SIDES = (120, 200, 336, 500)


def measure(model: str, n: int = 200, seed: int = R.HELD_OUT_SEED) -> dict:
    """{row: (accuracy %, count)}."""
    mllm = load_mllm(model, device="cpu")
    items = [it for it in synthetic.generate(n, seed=seed) if it.category == "direct_attributes"]
    focus = Focus(mllm, preset(mllm.family, "vstar", n_steps=8))
    rng = np.random.default_rng(0)
    rows = defaultdict(list)
    for it in tqdm(items, desc="crops", mininterval=10):
        tb = it.bboxes[0]
        tr = focus.answer(it.image, it.text)
        where = R.where_lost(tr, tb)
        ok = exact_match(tr.answer, it.label)
        rows[f"FOCUS n=8, chosen crops {'hold' if where == 'held' else 'miss'} the target"].append(ok)
        rows[f"share the ranking lost (a verified crop held it), target shape {it.target_objects[0]}"].append(
            where.startswith("ranking"))
        if where != "held":
            rows["FOCUS n=8, miss: " + {"ranking: whole": "ranking chose another; a verified ROI holds it whole",
                                        "ranking: part": "ranking chose another; verified ROIs hold only part of it",
                                        "proposals": "no verified ROI holds it"}[where]].append(ok)
        for side in SIDES:
            crop, win = R._crop_around(it.image, tb, side, rng)
            rivals = sum(d["color"] in it.options and R._overlaps(R._xyxy(d["bbox"]), win) for d in it.distractors)
            ok = exact_match(mllm.generate([crop], it.text), it.label)
            rows[f"side {side}"].append(ok)
            rows[f"side {side}, {'no' if rivals == 0 else '>= 1'} distractor of an option's colour"].append(ok)
    return {k: (round(100 * float(np.mean(v)), 1), len(v)) for k, v in sorted(rows.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/models/miniature-llava-1.5")
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args(argv)
    out = measure(a.model, a.n)
    print("| | % (answers right; 'share' rows: of the questions) | n |\n|---|---|---|")
    for k, (acc, cnt) in out.items():
        print(f"| {k} | {acc} | {cnt} |")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
