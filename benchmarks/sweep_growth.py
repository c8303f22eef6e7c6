"""Which ROI growth rule behaves as Tab. 12 says? A sweep on planted relevance maps (decisions.md D4).

    python benchmarks/sweep_growth.py [--maps 200] [--out benchmarks/results_growth.md]

Tab. 12b: 50 expansion thresholds drawn from U(0.3, 0.7) leave LLaVA-1.5's V* accuracy unchanged
(72.77 +- 0.00) and move OV's by 0.25; Tab. 12c: s_max has the largest impact; A.3: s_max sets a crop of
1-2x the encoder's base resolution. So under the paper's rule the threshold must (almost) never change the
top proposals, and the top ROI must (almost) always reach s_max. We compare both rules of
`focuslib.core.rois.grow_roi`:

    map-mean  grow while mean(box) >= t * mean(map)        (the default)
    anchor    grow while mean(box) >= t * map[anchor]      (the earlier reading)

Maps: LLaVA-1.5 on a V*-sized image (2246 x 1582 padded to square: 24 x 24 cells, rows 3-20 real,
93.6 px per cell) and LLaVA-OV (60 x 108 local grid, Gaussian sigma 1, pooled 2x -> 30 x 54). Each map is
log-normal background noise plus 1-4 Gaussian blobs (sigma 0.6-2.5 cells, 2-20x the background level),
raised to the power 1-3 (the product over 1-3 target tokens), normalised to sum 1. Proposals use the
presets' k, s_min, s_dist, NMS; "top-8" = the ROIs FOCUS verifies at n_steps = 8.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from focuslib.core.config import preset
from focuslib.core.relevance import smooth_and_downsample
from focuslib.core.rois import propose_rois

MODELS = {  # name: (preset family, raw grid (h, w), valid rows of the raw grid or None, px per map cell)
    "llava-1.5": ("llava-1.5", (24, 24), (3, 21), 2246 / 24),
    "llava-ov": ("llava-onevision", (60, 108), None, 2246 / 54),
}
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
S_MAX = (3, 5, 7, 9, 11)
RULES = ("map-mean", "anchor")
TOP = 8


def planted_map(rng: np.random.Generator, model: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One realistic map and its valid mask, both `[h, w]` on the grid FOCUS ranks on."""
    family, (h, w), rows, _ = MODELS[model]
    valid = torch.zeros(h, w, dtype=torch.bool)
    r_lo, r_hi = rows or (0, h)
    valid[r_lo:r_hi] = True
    m = rng.lognormal(0.0, 0.5, (h, w))
    rr, cc = np.mgrid[0:h, 0:w]
    scale = h / 24  # blob sizes in LLaVA cells, scaled to the raw grid
    for _ in range(rng.integers(1, 5)):
        r, c = rng.uniform(r_lo, r_hi - 1), rng.uniform(0, w - 1)
        sigma = rng.uniform(0.6, 2.5) * scale
        m += rng.uniform(2, 20) * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2))
    m = torch.tensor(m ** rng.integers(1, 4), dtype=torch.float32) * valid
    if model == "llava-ov":  # D6: Gaussian filter then 2x average pooling
        m = smooth_and_downsample(m, 1.0, 2)
        valid = torch.ones_like(m, dtype=torch.bool)
    return m / m.sum(), valid


def proposals(m, valid, model: str, rule: str, t: float, s_max: int | None = None):
    cfg = preset(MODELS[model][0], "vstar", n_steps=TOP)
    rois = propose_rois(m, cfg.k, cfg.s_min, s_max or cfg.s_max, cfg.s_dist, t, cfg.nms_threshold,
                        valid=valid, growth_rule=rule)
    return [r.grid for r in rois]


def changed_boxes(props, ref) -> float:
    """Fraction of the first TOP ranks whose box differs from the reference (a missing rank counts)."""
    n = max(min(TOP, len(ref)), 1)
    return sum(i >= len(props) or i >= len(ref) or props[i] != ref[i] for i in range(n)) / n


def side(box) -> int:
    return max(box[2] - box[0], box[3] - box[1])


def sweep(n_maps: int, seed: int = 0) -> list[str]:
    lines = []
    for model in MODELS:
        cfg = preset(MODELS[model][0], "vstar", n_steps=TOP)
        px = MODELS[model][3]
        maps = [planted_map(np.random.default_rng(seed + i), model) for i in range(n_maps)]
        lines += [f"\n## {model} (V* preset: k={cfg.k}, s_min={cfg.s_min}, s_max={cfg.s_max}, "
                  f"s_dist={cfg.s_dist:g}, NMS {cfg.nms_threshold}; {n_maps} maps, {px:.0f} px per cell)\n",
                  "### Threshold sweep at the preset's s_max\n",
                  "| rule | t_expand | top-1 side [cells] | top-1 at s_max | top-1 crop [px] | "
                  "top-1 differs from t=0.5 | top-8 boxes that differ | top-8 list differs | "
                  "any of 50 U(0.3,0.7) draws changes the top-8 list |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        draws = np.random.default_rng(seed).uniform(0.3, 0.7, 50)
        for rule in RULES:
            ref = [proposals(m, v, model, rule, 0.5) for m, v in maps]
            changed50 = np.mean([any(proposals(m, v, model, rule, float(t))[:TOP] != r[:TOP] for t in draws)
                                 for (m, v), r in zip(maps, ref)])
            for t in THRESHOLDS:
                props = ref if t == 0.5 else [proposals(m, v, model, rule, t) for m, v in maps]
                sides = np.array([side(p[0]) for p in props])
                d1 = np.mean([p[0] != r[0] for p, r in zip(props, ref)])
                d8 = np.mean([p[:TOP] != r[:TOP] for p, r in zip(props, ref)])
                b8 = np.mean([changed_boxes(p, r) for p, r in zip(props, ref)])
                lines.append(f"| {rule} | {t} | {sides.mean():.2f} | {np.mean(sides >= cfg.s_max):.0%} | "
                             f"{sides.mean() * px:.0f} | {d1:.0%} | {b8:.1%} | {d8:.0%} | "
                             f"{f'{changed50:.0%}' if t == 0.5 else ''} |")
        lines += ["\n### s_max sweep at t_expand = 0.5\n",
                  "| rule | s_max | top-1 side [cells] | top-1 at s_max | top-1 crop [px] |",
                  "| --- | --- | --- | --- | --- |"]
        for rule in RULES:
            for s_max in S_MAX:
                sides = np.array([side(proposals(m, v, model, rule, 0.5, s_max)[0]) for m, v in maps])
                lines.append(f"| {rule} | {s_max} | {sides.mean():.2f} | {np.mean(sides >= s_max):.0%} | "
                             f"{sides.mean() * px:.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_growth.md")))
    args = ap.parse_args()
    head = ["# ROI growth rule: threshold vs s_max on planted maps",
            "", f"`python benchmarks/sweep_growth.py --maps {args.maps} --seed {args.seed}`; "
            "see the script's docstring for the maps and decisions.md D4 for the choice.",
            "Percentages are over maps (top-8 boxes: over the first 8 ranks of every map). \"differs\": the "
            "grid box at that rank (top-1, top-8 boxes) or the ordered list of the first 8 grid boxes is not the "
            "one obtained at t_expand = 0.5. The last column draws 50 thresholds "
            "from U(0.3, 0.7) as Tab. 12b did."]
    text = "\n".join(head + sweep(args.maps, args.seed)) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
