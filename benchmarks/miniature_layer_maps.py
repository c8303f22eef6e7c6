"""Which LM layers' value maps peak where, and on which image token? (results_miniature.md, Update 7)

    python benchmarks/miniature_layer_maps.py --models run10=data/models/miniature-llava-1.5 run14=.cache/m3-run14/final
    python benchmarks/miniature_layer_maps.py --models run14-L=.cache/m3-run14/final@.cache/m3-run14/stage-L.pt

Run 14's V-V map at the preset layers (3-5 of 6) stopped localizing while layer 3 alone still does. Per model and
layer, on `--n` held-out left/right questions (the target named by colour + shape): the map's hit@1 on the target,
the image cell its argmax falls on most often, and the cell whose value vector has the largest norm (mean over
heads) most often. Cells are numbered row-major over the 12 x 12 grid; padding cells count for the norm, not for
the map (the report masks them out too). ~15 s a model on 1 core.

`name=path@stage-X.pt` measures a recipe stage's checkpoint (miniature3 saves one per stage) in the architecture and
processor of the exported model at `path`: where in training the map forms (Update 8: in stage I, not before).
"""
from __future__ import annotations

import argparse
import collections

import torch

from focuslib.core.config import preset
from focuslib.models import load_mllm
from focuslib.offline import synthetic
from focuslib.offline.miniature_report import HELD_OUT_SEED, _map_and_box, _overlaps, _xyxy


def layer_table(path: str, items, stage_ckpt: str | None = None) -> list[dict]:
    """One row per layer and one for the preset layers together: hit@1 %, the most frequent argmax cell and
    top-norm cell with their counts.

    stage_ckpt: a miniature3 `stage-X.pt` whose weights replace the exported model's (same architecture, strict)."""
    m = load_mllm(path, device="cpu", dtype="float32")
    if stage_ckpt:
        m.model.load_state_dict(torch.load(stage_ckpt, weights_only=False)["model"])
    arg, top, hit = (collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter),
                     collections.defaultdict(int))
    # one row per layer, then the preset layers together: the map the report's goals measure
    ranges = {i: range(i, i + 1) for i in range(m.num_layers)}
    pre = preset(m.family, "vstar").resolved_layers(m.num_layers)
    ranges[f"preset {pre.start}-{pre.stop - 1}"] = pre
    for it in items:
        rp = m.relevance_pass(it.image, it.target_objects[0])
        vis = rp.layout.positions.flatten()
        for name, layers in ranges.items():
            mp, box = _map_and_box(rp.values, rp, layers)
            arg[name][int(mp.argmax())] += 1
            hit[name] += _overlaps(box, _xyxy(it.bboxes[0]))
            norms = torch.stack([rp.values[i][:, vis, :].norm(dim=-1).mean(0) for i in layers]).mean(0)  # [N_img]
            top[name][int(norms.argmax())] += 1
    return [{"layer": i, "hit@1 %": round(100 * hit[i] / len(items), 1),
             "argmax cell (count)": arg[i].most_common(1)[0], "top-norm cell (count)": top[i].most_common(1)[0]}
            for i in ranges]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["run10=data/models/miniature-llava-1.5"], help="name=path")
    ap.add_argument("--n", type=int, default=40, help="left/right questions")
    ap.add_argument("--hits-only", action="store_true", help="one row per model: hit@1 per layer and preset (a "
                    "training trajectory: `name=final@stage-I.step-N.pt` per step kept by miniature3 --keep-checkpoints)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    items = [i for i in synthetic.generate(6 * a.n, seed=HELD_OUT_SEED)
             if i.category == "relative_position" and i.distractors][:a.n]
    header = False
    for spec in a.models:
        name, path = spec.split("=", 1)
        path, _, stage_ckpt = path.partition("@")
        rows = layer_table(path, items, stage_ckpt or None)
        if a.hits_only:
            if not header:
                print(f"| model (hit@1 %, n = {len(items)}) | " + " | ".join(f"layer {r['layer']}" if isinstance(
                    r["layer"], int) else r["layer"] for r in rows) + " |\n|---|" + "---|" * len(rows))
                header = True
            print(f"| {name} | " + " | ".join(str(r["hit@1 %"]) for r in rows) + " |", flush=True)
            continue
        if not header:
            print(f"| model | layer | hit@1 % (n = {len(items)}) | argmax cell (count) | top-norm cell (count) |\n"
                  "|---|---|---|---|---|")
            header = True
        for r in rows:
            print(f"| {name} | {r['layer']} | {r['hit@1 %']} | {r['argmax cell (count)']} | {r['top-norm cell (count)']} |")


if __name__ == "__main__":
    main()
