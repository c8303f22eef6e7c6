"""What the miniature can and cannot do, measured on a held-out synthetic fine-grained benchmark.

`python -m focuslib.offline.miniature_report --model data/models/miniature-llava-1.5` writes `report.json`
and the model card's tables (`report.md`). Three questions, each against its own baseline:

- accuracy: vanilla (whole image), oracle crop (ground truth), FOCUS at n_steps 1/2/4/8 (overrun) and
  FOCUS with a random map;
- existence on crops: positives, absent shapes, the target's name asked on a crop of another object
  ("elsewhere"), and a wrong colour for the object in the crop ("colour swap");
- localization of the relevance map on whole images: does the argmax cell touch the target, per layer
  range, vs chance (a uniform cell) and a trivial saliency map (colour saturation), and does it move
  when the question names a distractor instead (name specificity)?

The benchmark is `focuslib.offline.synthetic.generate(n, seed)`: 1600 x 1200 scenes, one 40-80 px target among
4-8 distractors (the same generator as `focus demo`); the training world never uses these seeds.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from focuslib.core.config import preset
from focuslib.core.relevance import object_relevance, random_relevance
from focuslib.core.rois import box_iou
from focuslib.core.search import Focus
from focuslib.eval.metrics import exact_match, paired_difference, wilson_interval
from focuslib.models import load_mllm
from focuslib.models.base import yes_confidence
from focuslib.offline import synthetic


HELD_OUT_SEED = 1000
STEPS = (1, 2, 4, 8)
RANDOM_STEPS = (2, 8)
KK_STEPS = (8,)    # Tab. 3 in miniature: the same search with the K-K map (keys without RoPE)


def _overlaps(a, b) -> bool:
    """xyxy boxes share area (the same test as `focus demo`'s 'chosen crop overlaps it')."""
    return box_iou(a, b) > 0


def crops_hold(chosen: list, bboxes: list) -> bool:
    """Whether FOCUS's chosen crops (xyxy) overlap every ground-truth box (xywh): the report's "crop hits GT"."""
    return all(any(_overlaps(_xyxy(b), c) for c in chosen) for b in bboxes)


def _xyxy(b):
    return (b[0], b[1], b[0] + b[2], b[1] + b[3])


def where_lost(tr, box) -> str:
    """Where FOCUS's search put one target `box` (xywh), from its Trace: "held" (the chosen crops overlap it);
    "ranking: whole" / "ranking: part" (a crop it verified holds the target whole / overlaps part of it, but the
    Yes/No ranking chose crops without it); "proposals" (no verified crop overlaps it; without verification, as
    at n_steps 1, nothing was ranked and the top ROI is the chosen one). The report's "ranking lost GT %" is the
    two "ranking" cases (benchmarks/miniature_crops.py)."""
    if crops_hold(tr.chosen_boxes, [box]):
        return "held"
    seen = [t.rois[i].box for t in tr.per_target for i in t.verified]
    x0, y0, x1, y1 = _xyxy(box)
    if any(b[0] <= x0 and b[1] <= y0 and b[2] >= x1 and b[3] >= y1 for b in seen):
        return "ranking: whole"
    return "ranking: part" if crops_hold(seen, [box]) else "proposals"


def accuracy(mllm, items, steps=STEPS, random_steps=RANDOM_STEPS, kk_steps=KK_STEPS) -> tuple[dict, dict]:
    """Accuracy (%) per method and category, plus FOCUS's search forward passes and crop hit rate; and each
    method's per-question outcomes per category ("1"/"0" per question, in item order), from which the report's
    intervals of paired differences are computed (`goals`)."""
    fam = mllm.family
    methods = {"vanilla": None, "oracle crop": None}
    methods.update({f"FOCUS n={n}": Focus(mllm, preset(fam, "vstar", n_steps=n)) for n in steps})
    methods.update({f"FOCUS random map n={n}": Focus(mllm, preset(fam, "vstar", n_steps=n, map_variant="random"))
                    for n in random_steps})
    methods.update({f"FOCUS K-K map n={n}": Focus(mllm, preset(fam, "vstar", n_steps=n, map_variant="kk"))
                    for n in kk_steps})
    rows = defaultdict(lambda: defaultdict(list))
    fps, hits, ranked_out = defaultdict(list), defaultdict(list), defaultdict(list)
    plain = Focus(mllm, preset(fam, "vstar"))
    for it in tqdm(items, desc="accuracy", mininterval=10):
        for name, f in methods.items():
            if name == "vanilla":
                pred = plain.vanilla(it.image, it.text)
            elif name == "oracle crop":
                pred = mllm.generate([synthetic.render_crop_oracle(it)], it.text)
            else:
                tr = f.answer(it.image, it.text)
                pred = tr.answer
                fps[name].append(tr.search_fp)
                hits[name].append(crops_hold(tr.chosen_boxes, it.bboxes))
                if len(it.bboxes) == 1:   # one target (colour questions): did the ranking lose a verified hit?
                    ranked_out[name].append(where_lost(tr, it.bboxes[0]).startswith("ranking"))
            ok = exact_match(pred, it.label)
            rows[name][it.category].append(ok)
            rows[name]["all"].append(ok)
    out, outcomes = {}, {}
    for name, cats in rows.items():
        out[name] = {c: round(100 * float(np.mean(v)), 1) for c, v in cats.items()}
        outcomes[name] = {c: "".join("1" if ok else "0" for ok in v) for c, v in cats.items() if c != "all"}
        if name in fps:
            out[name]["search FP"] = round(float(np.mean(fps[name])), 2)
            out[name]["crop hits GT %"] = round(100 * float(np.mean(hits[name])), 1)
            if ranked_out[name]:
                out[name]["ranking lost GT %"] = round(100 * float(np.mean(ranked_out[name])), 1)
    cats = sorted({it.category for it in items})
    out["chance"] = {c: round(100 / (4 if c == "direct_attributes" else 2), 1) for c in cats}
    return out, outcomes


def _crop_around(image, box, side, rng):
    """A side x side crop containing `box` (xywh) at a random offset, clipped to the image."""
    W, H = image.size
    x, y, w, h = box
    side = int(max(side, w + 2, h + 2))
    x0 = int(np.clip(x + w / 2 - side / 2 + rng.uniform(-0.25, 0.25) * side, 0, max(0, W - side)))
    y0 = int(np.clip(y + h / 2 - side / 2 + rng.uniform(-0.25, 0.25) * side, 0, max(0, H - side)))
    x0, y0 = min(x0, x), min(y0, y)
    x0, y0 = max(x0, x + w - side), max(y0, y + h - side)
    return image.crop((x0, y0, x0 + side, y0 + side)), (x0, y0, x0 + side, y0 + side)


def existence(mllm, items, seed: int = 0, crop_cells: tuple = (3, 5)) -> dict:
    """Yes/No accuracy (%) on ROI-sized crops (3-5 cells of the 12 x 12 whole-image grid).

    positives: crop on the target, its name; absent: crop on a distractor, a shape not in the scene;
    elsewhere: crop on a distractor (target not inside), the target's name; colour swap: crop on the
    target, '{wrong colour} {shape}'."""
    rng = np.random.default_rng(seed)
    res = defaultdict(list)
    conf = defaultdict(list)
    for it in tqdm([i for i in items if i.category == "direct_attributes"], desc="existence", mininterval=10):
        W, H = it.image.size
        cell = max(W, H) / mllm.grid
        shape = it.target_objects[0]
        tbox = it.bboxes[0]
        qs = []
        side = cell * rng.integers(crop_cells[0], crop_cells[1] + 1)
        crop, _ = _crop_around(it.image, tbox, side, rng)
        qs.append(("positives", crop, shape, True))
        color = it.options[synthetic.LETTERS.index(it.label)]   # the colour question's correct option
        wrong = [c for c in synthetic.COLORS if c != color]
        qs.append(("colour swap", crop, f"{wrong[rng.integers(len(wrong))]} {shape}", False))
        far = [d for d in it.distractors if not _overlaps_expanded(d["bbox"], tbox, side)]
        if far:
            d = far[rng.integers(len(far))]
            crop_d, win = _crop_around(it.image, d["bbox"], side, rng)
            if not _overlaps(win, _xyxy(tbox)):
                qs.append(("elsewhere", crop_d, shape, False))
                in_scene = {shape} | {x["shape"] for x in it.distractors}
                absent = [s for s in synthetic.SHAPES if s not in in_scene]
                if absent:
                    qs.append(("absent", crop_d, absent[rng.integers(len(absent))], False))
        for kind, im, target, truth in qs:
            c = float(yes_confidence(mllm.existence_logits([im], target))[0])
            res[kind].append((c > 0) == truth)
            conf[kind].append(c)
    out = {k: round(100 * float(np.mean(v)), 1) for k, v in res.items()}
    out["n"] = {k: len(v) for k, v in res.items()}
    out["mean c_yes"] = {k: round(float(np.mean(v)), 3) for k, v in conf.items()}
    return out


def _overlaps_expanded(b, t, side):
    """Would a side-sized crop around b possibly include t? (centre distance test)."""
    return abs((b[0] + b[2] / 2) - (t[0] + t[2] / 2)) < side and abs((b[1] + b[3] / 2) - (t[1] + t[3] / 2)) < side


def saliency_map(image, layout) -> torch.Tensor:
    """Trivial baseline: mean colour saturation (max - min channel) of each cell's pixels `[h, w]`."""
    arr = np.asarray(image.convert("RGB")).astype(np.float32)
    sat = arr.max(-1) - arr.min(-1)
    h, w = layout.shape
    out = torch.zeros(h, w)
    for r in range(h):
        for c in range(w):
            x0, y0, x1, y1 = (int(round(float(v))) for v in layout.cell_boxes[r, c])
            if x1 > x0 and y1 > y0:
                out[r, c] = float(sat[y0:y1, x0:x1].mean())
    return out


def _argmax_box(m: torch.Tensor, layout):
    r, c = divmod(int(torch.argmax(m)), m.shape[1])
    return tuple(float(v) for v in layout.cell_boxes[r, c])


def _map_and_box(cache, rp, layers):
    """The map `[h, w]` from per-layer caches (values or keys) at `layers`, padding cells zeroed, and its argmax
    cell's pixel box."""
    lay = rp.layout
    m = object_relevance(cache, rp.target_idx, lay.positions.flatten(), layers).view(lay.shape) * lay.valid
    return m, _argmax_box(m, lay)


def _ranges(num_layers: int, fam: str) -> dict[str, range]:
    half = num_layers // 2
    out = {f"layer {i}": range(i, i + 1) for i in range(num_layers)}
    out.update({f"layers 0-{half}": range(0, half), f"layers {half}-{num_layers}": range(half, num_layers),
                "all layers": range(0, num_layers)})
    out["preset (paper's fraction)"] = preset(fam, "vstar").resolved_layers(num_layers)
    return out


def _queries(it):
    """(query, its boxes, other query, the other's boxes) of an item for the localization check.

    colour questions name a shape (unique in the scene); the other query is a distractor's shape.
    left/right questions name 'colour shape' objects; the other query is the second object."""
    if it.category == "direct_attributes":
        d = it.distractors[0]
        return (it.target_objects[0], [_xyxy(it.bboxes[0])], d["shape"],
                [_xyxy(x["bbox"]) for x in it.distractors if x["shape"] == d["shape"]])
    return it.target_objects[0], [_xyxy(it.bboxes[0])], it.target_objects[1], [_xyxy(it.bboxes[1])]


def localization(mllm, items) -> dict:
    """Hit@1 (%): the map's argmax cell overlaps the queried object's box, per layer range; baselines.

    Per kind of query: a shape name (colour questions) or a 'colour shape' name (left/right questions).
    'mass lift': the map's mass on cells touching the target / their share of cells (1 = chance).
    Name specificity: the map for the other query should land on the other object, not the target."""
    ranges = _ranges(mllm.num_layers, mllm.family)
    tables, counts = {}, {}
    kinds = {"shape name": "direct_attributes", "colour + shape name": "relative_position"}
    for kind, cat in kinds.items():
        hit, lift, any_obj = defaultdict(list), defaultdict(list), defaultdict(list)
        spec_target, spec_moved = defaultdict(list), defaultdict(list)
        chance, sal_hit, sal_any, kk_hit, kk_any, rnd_hit = [], [], [], [], [], []
        for it in tqdm([i for i in items if i.category == cat and i.distractors],
                       desc=f"localization ({kind})", mininterval=10):
            q, qboxes, q2, q2boxes = _queries(it)
            objs = [_xyxy(b) for b in it.bboxes] + [_xyxy(d["bbox"]) for d in it.distractors]
            rp = mllm.relevance_pass(it.image, q, keys=True)
            rp2 = mllm.relevance_pass(it.image, q2)
            lay = rp.layout
            vis = lay.positions.flatten()
            cells = lay.cell_boxes.view(-1, 4)
            touch = torch.tensor([any(_overlaps(tuple(b.tolist()), t) for t in qboxes) for b in cells])
            touch = touch.view(lay.shape) & lay.valid.bool()
            chance.append(float(touch.sum() / lay.valid.sum()))
            sal = _argmax_box(saliency_map(it.image, lay) * lay.valid, lay)
            sal_hit.append(any(_overlaps(sal, t) for t in qboxes))
            sal_any.append(any(_overlaps(sal, o) for o in objs))
            _, kb = _map_and_box(rp.keys_norope, rp, ranges["preset (paper's fraction)"])
            kk_hit.append(any(_overlaps(kb, t) for t in qboxes))
            kk_any.append(any(_overlaps(kb, o) for o in objs))
            rb = _argmax_box(random_relevance(vis.numel(), seed=len(rnd_hit)).view(lay.shape) * lay.valid, lay)
            rnd_hit.append(any(_overlaps(rb, t) for t in qboxes))
            for name, layers in ranges.items():
                m, box = _map_and_box(rp.values, rp, layers)
                hit[name].append(any(_overlaps(box, t) for t in qboxes))
                any_obj[name].append(any(_overlaps(box, o) for o in objs))
                lift[name].append(float(m[touch].sum() / m.sum().clamp_min(1e-30)) / max(chance[-1], 1e-9))
                _, b2 = _map_and_box(rp2.values, rp2, layers)
                spec_target[name].append(any(_overlaps(b2, t) for t in q2boxes))
                spec_moved[name].append(any(_overlaps(b2, t) for t in qboxes))
        if not chance:
            continue
        pct = lambda v: round(100 * float(np.mean(v)), 1)  # noqa: E731
        t = {name: {"hit@1 target %": pct(hit[name]), "hit@1 any object %": pct(any_obj[name]),
                    "mass lift": round(float(np.mean(lift[name])), 2),
                    "other query: hits the other %": pct(spec_target[name]),
                    "other query: still on target %": pct(spec_moved[name])} for name in ranges}
        t["K-K map, preset layers"] = {"hit@1 target %": pct(kk_hit), "hit@1 any object %": pct(kk_any)}
        t["random map"] = {"hit@1 target %": pct(rnd_hit)}
        t["chance (uniform cell)"] = {"hit@1 target %": pct(chance)}
        t["saliency (colour saturation)"] = {"hit@1 target %": pct(sal_hit), "hit@1 any object %": pct(sal_any)}
        tables[kind], counts[kind] = t, len(chance)
    return {"n": counts, "layers": {k: [r.start, r.stop] for k, r in ranges.items()}, "tables": tables}


MAP_KINDS = {"shape": "direct_attributes", "colour shape": "relative_position"}


def preset_map_hits(mllm, items) -> dict:
    """Hit@1 (%) on the queried object of the V-V and the K-K map at the preset layers, per kind of query:
    {"map shape", "map colour shape", "kk map shape", "kk map colour shape"}. The same numbers as
    `localization`'s preset and K-K rows on the same items, without the rest of its table (one relevance pass
    an item): what miniature3's stage-I map probe measures, on probe scenes."""
    layers = preset(mllm.family, "vstar").resolved_layers(mllm.num_layers)
    out = {}
    for kind, cat in MAP_KINDS.items():
        vv, kk = [], []
        for it in (i for i in items if i.category == cat and i.distractors):
            q, qboxes, _, _ = _queries(it)
            rp = mllm.relevance_pass(it.image, q, keys=True)
            for hits, cache in ((vv, rp.values), (kk, rp.keys_norope)):
                hits.append(any(_overlaps(_map_and_box(cache, rp, layers)[1], t) for t in qboxes))
        if vv:
            out[f"map {kind}"] = round(100 * float(np.mean(vv)), 1)
            out[f"kk map {kind}"] = round(100 * float(np.mean(kk)), 1)
    return out


def run(model: str, n: int = 800, seed: int = HELD_OUT_SEED, out: str | Path | None = None,
        steps=STEPS, random_steps=RANDOM_STEPS, device: str = "cpu") -> dict:
    """All three measurements on `n` held-out items; written to `out/report.json` and `report.md`.
    device: "cuda" on a lent GPU (every recorded report ran on the CPU, float32; a GPU's kernels may move a
    near-tie, so compare reports made on the same kind of device)."""
    torch.manual_seed(0)
    mllm = load_mllm(model, device=device, dtype="float32")
    items = synthetic.generate(n, seed=seed)
    loc, ex = localization(mllm, items), existence(mllm, items)   # in this order, as every recorded report
    acc, outcomes = accuracy(mllm, items, steps, random_steps)
    rep = {"model": str(model), "benchmark": f"focuslib.offline.synthetic.generate({n}, seed={seed})",
           "localization": loc, "existence": ex, "accuracy": acc, "outcomes": outcomes}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(rep, indent=1))
        (out / "report.md").write_text(markdown(rep))
        if (Path(model) / "focuslib.json").exists() and Path(model).resolve() == out.resolve():
            (out / "README.md").write_text(model_card(model, rep))
    return rep


def _md_table(rows: dict, cols: list[str]) -> str:
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def markdown(rep: dict) -> str:
    acc = rep["accuracy"]
    cats = [c for c in ("direct_attributes", "relative_position", "all") if any(c in r for r in acc.values())]
    ex = rep["existence"]
    loc_cols = ["hit@1 target %", "hit@1 any object %", "mass lift", "other query: hits the other %",
                "other query: still on target %"]
    return "\n\n".join([
        f"Benchmark: `{rep['benchmark']}` (held out; 1600 x 1200, one 40-80 px target among 4-8 distractors).",
        "### Accuracy (%)\n\n" + _md_table(acc, cats + ["search FP", "crop hits GT %"]
                                            + (["ranking lost GT %"] if any("ranking lost GT %" in r for r in
                                                                           acc.values()) else []))
        + "\n\ncrop hits GT: the chosen crops overlap every target (all questions). ranking lost GT: on one-target "
          "questions, a crop FOCUS verified held the target, but the Yes/No ranking chose crops without it.",
        "### Existence on ROI-sized crops (accuracy %, mean c_yes)\n\n" + _md_table(
            {k: {"accuracy %": ex[k], "n": ex["n"][k], "mean c_yes": ex["mean c_yes"][k]} for k in ex["n"]},
            ["accuracy %", "n", "mean c_yes"]),
        *[f"### Localization of the relevance map on whole images: {kind} (n = {rep['localization']['n'][kind]})\n\n"
          + _md_table(t, loc_cols) for kind, t in rep["localization"]["tables"].items()],
    ])


def model_card(model: str | Path, rep: dict) -> str:
    """The model card (README.md of the shipped folder): what it is, data, recipe, numbers, limits."""
    model = Path(model)
    meta = json.loads((model / "focuslib.json").read_text()) if (model / "focuslib.json").exists() else {}
    r = meta.get("recipe", {})
    history = meta.get("history", meta.get("history_tail", []))   # history_tail: attempt-1 files
    hist = [h for h in history if "loss" in h]
    probes = [h for h in history if "probe" in h]
    vc = (json.loads((model / "config.json").read_text()).get("vision_config", {})
          if (model / "config.json").exists() else {})
    side, patch = vc.get("image_size", 96), vc.get("patch_size", 8)
    n_params = None
    st = model / "model.safetensors"
    if st.exists():
        from safetensors import safe_open
        with safe_open(str(st), "pt") as f:
            n_params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    return "\n\n".join([
        "# miniature-llava-1.5: a LLaVA-1.5 trained by focuslib on a CPU",
        "**What it is.** transformers' `LlavaForConditionalGeneration` (CLIP ViT vision tower, 2-layer GELU "
        "projector, Llama LM) at miniature size"
        + (f" ({n_params / 1e6:.1f}M parameters, stored in float16, loaded as float32)" if n_params else "")
        + f": {side} px input, patch {patch} -> {side // patch} x {side // patch} image tokens, "
        f"LM {r.get('lm_layers')} layers x {r.get('lm_hidden')} "
        f"hidden ({r.get('lm_heads')} heads), vision {r.get('vision_layers')} layers x {r.get('vision_hidden')}; "
        "a word-level tokenizer (every word of the kit's prompts, <unk> otherwise) with LLaVA-1.5's special tokens "
        "and chat format. It loads with `load_mllm(path)` through the unchanged LLaVA-1.5 adapter.",
        "**What it knows.** Only the synthetic world of `focuslib.offline.synthetic`: coloured shapes (6 shapes x 8 colours) "
        "on grey clutter. It was trained to answer existence questions, the colour of a named shape (lettered "
        "options), left/right of two named objects, brief captions, and the ICL target-extraction prompt; how "
        "well it does is measured below. It knows nothing else; it is the embedded default of `make demo` and of "
        "the notebooks' smoke mode (a trained model in the real architecture instead of random weights). It says "
        "nothing about LLaVA-1.5-7B's numbers.",
        "**Data.** Generated on the fly, deterministic by seed: 800 x 600 scenes with 4-9 shapes of 20-40 px "
        "(half the benchmark's scale), viewed through the whole scene, windows around an object at 1.3-14 x its "
        "size, and random windows, each padded to square and resized to "
        f"{side} px by the real processor path.",
        recipe_text(meta) + " Steps " + json.dumps(r.get("steps")) + ", batch sizes "
        + json.dumps(r.get("batch")) + ", AdamW, learning rates " + json.dumps(r.get("lr"))
        + ", cosine schedule, seed " + str(r.get("seed")) + ". Final losses (EMA): "
        + ", ".join(f"{h['stage']}@{h['step']} {h['loss']}" for h in hist[-3:]) + "."
        + (f" Last held-out probe during training (stage {probes[-1]['stage']}, teacher-forced, % of answers "
           f"right): {json.dumps(probes[-1]['probe'])}." if probes else ""),
        "## What this shows and what it does not",
        verdict(rep),
        "## Measured (`python -m focuslib.offline.miniature_report`)",
        markdown(rep),
    ]) + "\n"


GOALS = {"oracle crop": 90.0, "vanilla over chance": 10.0, "FOCUS n=8 over vanilla": 25.0, "map x chance": 5.0,
         "existence": 90.0}   # issue 16's goals, on colour questions (direct_attributes) unless said


def _paired(rep: dict, a: str, b: str, cat: str = "direct_attributes") -> tuple | None:
    """(difference, lo, hi, n) of methods a - b on the same questions, from the report's per-question outcomes;
    None for reports written before they were recorded."""
    oa, ob = (rep.get("outcomes", {}).get(m, {}).get(cat) for m in (a, b))
    if not oa or not ob or len(oa) != len(ob):
        return None
    return (*paired_difference([c == "1" for c in oa], [c == "1" for c in ob]), len(oa))


def _paired_note(rep: dict, a: str, b: str, cat: str = "direct_attributes") -> str:
    """' (difference +x pp, 95% interval lo..hi on the same n questions)', or ''."""
    p = _paired(rep, a, b, cat)
    if p is None:
        return ""
    d, lo, hi, n = p
    return f" (difference {d:+.1f} pp, 95% interval {lo:+.1f} to {hi:+.1f} on the same {n} questions)"


def goals(rep: dict) -> dict[str, tuple[str, bool]]:
    """Each goal of issue 16: (the sentence with its numbers, met?) computed from the report."""
    acc, da = rep["accuracy"], "direct_attributes"
    chance = acc["chance"][da]
    van, ora = acc["vanilla"].get(da, 0.0), acc["oracle crop"].get(da, 0.0)
    f8 = acc.get("FOCUS n=8", {}).get(da, 0.0)
    kk8 = acc.get("FOCUS K-K map n=8", {}).get(da)
    rnd8 = acc.get("FOCUS random map n=8", {}).get(da)
    ex = rep["existence"]
    n_ex = sum(ex["n"].values())
    ex_all = round(sum(ex[k] * ex["n"][k] for k in ex["n"]) / max(1, n_ex), 1)
    ex_k = round(ex_all * n_ex / 100)
    ex_ci = "" if not n_ex else " (95% interval {:.1f}-{:.1f})".format(*wilson_interval(ex_k, n_ex))
    out = {
        "oracle crop": (f"oracle crop {ora}% >= {GOALS['oracle crop']:.0f}%", ora >= GOALS["oracle crop"]),
        "vanilla": (f"vanilla {van}% <= chance {chance}% + {GOALS['vanilla over chance']:.0f} pp",
                    van <= chance + GOALS["vanilla over chance"]),
        "FOCUS": (f"FOCUS n=8 {f8}% >= vanilla {van}% + {GOALS['FOCUS n=8 over vanilla']:.0f} pp"
                  + _paired_note(rep, "FOCUS n=8", "vanilla"), f8 >= van + GOALS["FOCUS n=8 over vanilla"]),
        "existence": (f"existence on ROI-sized crops {ex_all}%{ex_ci} over all {n_ex} questions (" + ", ".join(
            f"{k} {ex[k]}%" for k in ex["n"]) + f") >= {GOALS['existence']:.0f}%", ex_all >= GOALS["existence"]),
    }
    if kk8 is not None and rnd8 is not None:
        out["V-V vs K-K, random (accuracy)"] = (
            f"FOCUS n=8 with the V-V map {f8}% vs K-K map {kk8}% and random map {rnd8}%"
            + _paired_note(rep, "FOCUS n=8", "FOCUS K-K map n=8"), f8 > max(kk8, rnd8))
    for kind, loc in rep["localization"]["tables"].items():
        pre = loc["preset (paper's fraction)"]
        ch = loc["chance (uniform cell)"]["hit@1 target %"]
        hit, other, stay = pre["hit@1 target %"], pre["other query: hits the other %"], pre["other query: still on target %"]
        out[f"map ({kind})"] = (
            f"relevance map (preset layers) hit@1 on the target by its {kind} {hit}% >= {GOALS['map x chance']:.0f} x "
            f"chance {ch}%, and name-specific (asked for another object it lands there {other}% vs stays {stay}%)",
            hit >= GOALS["map x chance"] * ch and other > stay)
        if "K-K map, preset layers" in loc:
            kk, rnd = loc["K-K map, preset layers"]["hit@1 target %"], loc["random map"]["hit@1 target %"]
            out[f"V-V vs K-K, random ({kind})"] = (
                f"hit@1 by its {kind}: V-V {hit}% vs K-K {kk}% and random {rnd}%", hit > max(kk, rnd))
    return out


def recipe_text(meta: dict) -> str:
    """The card's recipe paragraph for the recipe that made the model (attempt-1/2 or attempt-3)."""
    if meta.get("recipe_name") == "attempt-3":
        hist = meta.get("history", [])
        secs = {h["stage"]: h["seconds"] for h in hist if "seconds" in h}
        rec = meta.get("recipe", {})
        views = (f" Stage C views: {rec['c_easy']:.0%} object-centred, {rec['c_roi']:.0%} ROI-scale (the size of "
                 f"FOCUS's crops), the rest the general mix; stage I after its easy steps {rec['i_roi']:.0%} ROI-scale "
                 "(decisions D39)." if rec.get("c_roi") else "")
        scale = rec.get("tower_lr_scale", 0.1)
        tower = f"tower + projector at {scale:g}x" if scale else "tower + projector frozen"
        words = (f" Stage C also has a word-level term (weight {rec['c_words']:g}, decisions D41): for each of the 14 "
                 "colour and shape words, the best image token's cosine to the word's embedding is pushed above "
                 f"{rec.get('word_margin')} when the word is in view and below it when not (FILIP's token-wise "
                 "maximum)." if rec.get("c_words") else "")
        if rec.get("c_ground"):
            words += (f" Stage C also has a grounding term (weight {rec['c_ground']:g}, D41): each shape word in view "
                      "against the image tokens that shape covers.")
        if rec.get("noise") == "bytes":
            words += (" The training scenes' pixel noise is drawn as uniform bytes through the normal distribution's "
                      "quantiles (std 6 grey levels in 256 steps; `synthetic._pixel_noise`), a quarter of the cost; "
                      "the evaluation scenes keep the benchmarks' float normal noise.")
        if rec.get("options_in_view"):
            words += " Stage I's colour questions take their wrong options from colours in view (D40)."
        if rec.get("i_map_probe"):
            words += (f" Stage I probes the V-V map on {rec['i_map_probe']} held-out questions of another seed (D43)"
                      + (f" and stops below {rec['i_map_floor'][1]:g}% at step {rec['i_map_floor'][0]}"
                         if rec.get("i_map_floor") else "") + ".")
        ends = {h["stage"]: h for h in hist if "steps_run" in h}

        def why(h: dict) -> str:   # a stage stops early when its gate passed after min_steps, the budget ran out,
            return ("map probe below the floor" if h.get("map lost")   # or (stage I) the map probe hit the floor
                    else "gate passed" if h.get("passed") else f"{rec.get('budget_s', 5400) / 60:.0f}-min budget")
        short = [f"{k} {h['steps_run']} of {rec['steps'][k]} ({why(h)})" for k, h in ends.items()
                 if rec.get("steps", {}).get(k) and h["steps_run"] < rec["steps"][k]]
        if short:
            words += " Stages that stopped early: " + "; ".join(short) + "."
        cont = [h["continued_from"] for h in hist if "continued_from" in h]
        if cont:   # run 19: its stage C went on from another run's tower, so that run's stage C counts too
            words += (f" **Stage C continued the finished stage-C tower of `{cont[0]}`** (`--c-init`): its steps "
                      "and seconds below come on top of that run's stage C.")
        if rec.get("i_ema"):
            words += (f" Stage I's model (probed and saved) is a moving average of its weights (decay "
                      f"min({rec['i_ema']:g}, (1 + t) / (10 + t)) at step t).")
        return ("**Recipe** attempt-3 (`make miniature RECIPE=attempt-3`, `focuslib/offline/miniature3.py`, decisions "
                "D37), stages gated by held-out probes: C region-phrase contrastive pre-training of tower + projector "
                "against the LM's frozen unit-scale word embeddings (CLIP's softmax over the 48 colour-shape phrases "
                "and 'background', per patch and per object region; the grounding signal is where each named object "
                "is) -> P copy pre-training of the LM (random word sequences repeated: the induction heads a text "
                "pre-training gives) -> L text-only letter curriculum (colour word -> option letter, colour of a "
                "named shape from a sentence, left/right from a sentence, the ICL prompt) -> I instruction tuning on "
                "images (colour with lettered options, left/right, existence with hard negatives, captions naming "
                "objects with coarse positions, ICL; LM at the stage's rate, " + tower + "; word embeddings never "
                "trained)." + views + words + " Seconds per stage: " + json.dumps(secs) + "."
                + (" **Stage I ended below its gate** (held-out colour / existence probes; the gates are in the "
                   "recipe): every stage ran, so the model was measured and kept; it ships under the shipping rule "
                   "of decisions D37 (more of issue 16's goals met than the model it replaces, or as many with a "
                   "higher oracle-crop accuracy)."
                   if meta.get("gates_passed") is False else ""))
    return ("**Recipe** (`make miniature`, `focuslib/offline/miniature.py`, decisions D23): V vision-tower pre-training "
            "(multi-label colour/shape classification, max-pooled patch head) -> T LM pre-training on word scenes "
            "(the image positions carry word embeddings) -> A projector alignment on captions (LM and tower frozen) -> "
            "I instruction tuning (projector + LM).")


def verdict(rep: dict) -> str:
    """Plain sentences on issue 16's goals, computed from the numbers (so the card never overstates)."""
    g = goals(rep)
    lines = [f"- {text} -> {'met' if ok else 'NOT met'}" for text, ok in g.values()]
    met = sum(ok for _, ok in g.values())
    acc, da = rep["accuracy"], "direct_attributes"
    bottom = ""
    if acc["oracle crop"].get(da, 0) - acc["chance"][da] <= 10:
        bottom = ("\n\n**Bottom line:** oracle-crop accuracy is within 10 pp of chance, so the model cannot answer "
                  "colour questions even when the target fills the view: no search can help. The model shows "
                  "FOCUS's mechanics on a trained network in the real architecture, not FOCUS's benefit.")
    elif g["FOCUS"][1]:
        bottom = ("\n\n**Bottom line:** the fine-grained failure is reproduced (the target is unreadable in the "
                  "whole image, readable on a crop) and FOCUS's search recovers most of the gap.")
    elif acc.get("FOCUS n=8", {}).get(da, 0) - acc["vanilla"].get(da, 0) >= 10:   # short of the goal, but helps
        f8, van, ora = acc["FOCUS n=8"].get(da), acc["vanilla"].get(da), acc["oracle crop"].get(da)
        hits = acc["FOCUS n=8"].get("crop hits GT %")
        p = _paired(rep, "FOCUS n=8", "vanilla", da)   # the goal line's difference, unrounded accuracies
        gain = p[0] if p else f8 - van
        bottom = (f"\n\n**Bottom line:** the fine-grained failure is reproduced (oracle crop {ora}% vs vanilla {van}%) "
                  f"and FOCUS recovers part of the gap (n=8: {f8}%, {gain:+.1f} pp, "
                  f"{round(100 * (f8 - van) / max(1e-9, ora - van))}% of the oracle's gain; the goal is "
                  f"+{GOALS['FOCUS n=8 over vanilla']:.0f} pp). Its chosen crops hold the target on {hits}% of all "
                  "questions (both kinds), and those crops are larger than the oracle's, with other objects in view.")
        lost = acc["FOCUS n=8"].get("ranking lost GT %")
        if lost is not None:   # reports from before 2026-12-07 lack it
            bottom += (f" On {lost}% of the colour questions a crop that FOCUS verified held the target, but the "
                       "Yes/No ranking chose crops without it (benchmarks/miniature_crops.py splits these further).")
    else:
        ex = rep["existence"]
        neg = [k for k in ("elsewhere", "absent") if k in ex]
        said_yes = [round(100 - ex[k], 1) for k in neg]
        bottom = (f"\n\n**Bottom line:** the model reads the answer off a crop (oracle "
                  f"{acc['oracle crop'].get(da)}% vs vanilla {acc['vanilla'].get(da)}%), but FOCUS does not recover it")
        if said_yes and min(said_yes) >= 50:
            bottom += (": its existence answers ignore the shape name (Yes on " + " / ".join(
                f"{v}% of {k} crops" for k, v in zip(neg, said_yes)) + ", which hold no such object), so "
                "the verification step cannot tell the target's crop from the others")
        bottom += "."
    return (f"Goals of issue 16 ({met} of {len(g)} met; colour questions = direct_attributes):\n\n"
            + "\n".join(lines) + bottom)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/models/miniature-llava-1.5")
    ap.add_argument("--n", type=int, default=800, help="held-out items, half of them colour questions (D42: 800 "
                    "gives about +-6 pp on a goal's difference; ~30 min on 2 cores)")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    ap.add_argument("--out", default=None, help="folder for report.json / report.md (default: the model folder)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cuda on a lent GPU")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rep = run(a.model, a.n, a.seed, a.out or a.model, device=a.device)
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
