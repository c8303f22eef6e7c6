"""Which LM layers' value maps peak where, and on which image token? (results_miniature.md, Update 7)

    python benchmarks/miniature_layer_maps.py --models run10=data/models/miniature-llava-1.5 run14=.cache/m3-run14/final

Run 14's V-V map at the preset layers (3-5 of 6) stopped localizing while layer 3 alone still does. Per model and
layer, on `--n` held-out left/right questions (the target named by colour + shape): the map's hit@1 on the target,
the image cell its argmax falls on most often, and the cell whose value vector has the largest norm (mean over
heads) most often. Cells are numbered row-major over the 12 x 12 grid; padding cells count for the norm, not for
the map (the report masks them out too). ~15 s a model on 1 core.
"""
from __future__ import annotations

import argparse
import collections

import torch

from focuslib.core.relevance import object_relevance
from focuslib.models import load_mllm
from focuslib.offline import synthetic
from focuslib.offline.miniature_report import HELD_OUT_SEED, _argmax_box, _overlaps, _xyxy


def layer_table(path: str, items) -> list[dict]:
    """One row per layer: hit@1 %, the most frequent argmax cell and top-norm cell with their counts."""
    m = load_mllm(path, device="cpu", dtype="float32")
    arg, top, hit = (collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter),
                     collections.defaultdict(int))
    for it in items:
        rp = m.relevance_pass(it.image, it.target_objects[0])
        lay, vis = rp.layout, rp.layout.positions.flatten()
        for layer in range(m.num_layers):
            mp = object_relevance(rp.values, rp.target_idx, vis, range(layer, layer + 1)).view(lay.shape) * lay.valid
            arg[layer][int(mp.argmax())] += 1
            hit[layer] += _overlaps(_argmax_box(mp, lay), _xyxy(it.bboxes[0]))
            norms = rp.values[layer][:, vis, :].norm(dim=-1).mean(0)     # [H, N_img, D] -> [N_img]
            top[layer][int(norms.argmax())] += 1
    return [{"layer": i, "hit@1 %": round(100 * hit[i] / len(items), 1),
             "argmax cell (count)": arg[i].most_common(1)[0], "top-norm cell (count)": top[i].most_common(1)[0]}
            for i in range(m.num_layers)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["run10=data/models/miniature-llava-1.5"], help="name=path")
    ap.add_argument("--n", type=int, default=40, help="left/right questions")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    items = [i for i in synthetic.generate(6 * a.n, seed=HELD_OUT_SEED)
             if i.category == "relative_position" and i.distractors][:a.n]
    print(f"| model | layer | hit@1 % (n = {len(items)}) | argmax cell (count) | top-norm cell (count) |\n|---|---|---|---|---|")
    for spec in a.models:
        name, path = spec.split("=", 1)
        for r in layer_table(path, items):
            print(f"| {name} | {r['layer']} | {r['hit@1 %']} | {r['argmax cell (count)']} | {r['top-norm cell (count)']} |")


if __name__ == "__main__":
    main()
