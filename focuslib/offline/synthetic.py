"""A synthetic fine-grained VQA benchmark written in V*Bench's on-disk schema.

Real benchmarks cannot be downloaded on our machines, so experiments and tests use this stand-in:
large cluttered grey images with ONE small coloured target shape (or two named shapes), with exact
ground-truth boxes, in the two V*Bench categories the paper uses:

- direct_attributes: "What is the color of the {shape}?" -- 4 colour options, the shape is unique;
- relative_position: "Is the {A} on the left or right side of the {B}?" -- options left / right,
  the two "{colour} {shape}" objects unique and >= 25% of the width apart horizontally.

Everything is deterministic by seed (numpy Generator per item, never the global RNG), and
`write_vstar` / `read_vstar` use V*Bench's layout: `test_questions.jsonl` plus `<category>/<name>.jpg`
with a sibling `<name>.json` (target_object, bbox [x, y, w, h], question, options correct first).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
# saturated or extreme colours, all far from the mid-grey background
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 40),
    "purple": (140, 50, 180),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
CATEGORIES: tuple[str, ...] = ("direct_attributes", "relative_position")
INSTRUCTION = "Answer with the option's letter from the given choices directly."
JSONL_NAME = "test_questions.jsonl"
LETTERS = "ABCDEFGH"
MIN_REL_SEPARATION = 0.25  # relative_position: |dx| between object centres >= this x width


@dataclass
class SyntheticItem:
    """One benchmark record; `bboxes[i]` ([x, y, w, h], original pixels) belongs to `target_objects[i]`."""

    question_id: str
    image: Image.Image
    text: str  # full prompt: question, "(A) .." option lines, instruction
    question: str  # without options
    options: list[str]  # in displayed order
    label: str  # letter of the correct option
    category: str
    target_objects: list[str]
    bboxes: list[list[int]]
    # synthetic-only extra: [{"shape", "color", "bbox"}] of the distractor shapes (hard negatives)
    distractors: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# drawing


def _shape_mask(shape: str, s: int) -> Image.Image:
    """An s x s "L" mask of `shape` filling its canvas (255 inside)."""
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    c, r = (s - 1) / 2, (s - 1) / 2
    if shape == "circle":
        d.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif shape == "square":
        d.rectangle([0, 0, s - 1, s - 1], fill=255)
    elif shape == "triangle":
        d.polygon([(c, 0), (s - 1, s - 1), (0, s - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(c, 0), (s - 1, c), (c, s - 1), (0, c)], fill=255)
    elif shape == "cross":
        a = s / 3  # arm width: the centre third stays filled
        d.rectangle([a, 0, s - 1 - a, s - 1], fill=255)
        d.rectangle([0, a, s - 1, s - 1 - a], fill=255)
    elif shape == "star":
        # inner radius 0.45 R keeps a solid core (a thin star would hide its colour after JPEG)
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((c + rad * math.cos(ang), c + rad * math.sin(ang)))
        d.polygon(pts, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return m


NOISE_STD = 6.0   # the background's fine pixel noise (grey levels)
NOISE_KINDS = ("normal", "bytes")   # how it is drawn (_pixel_noise)


def _quantile_table(std: float, levels: int = 256) -> np.ndarray:
    """The normal distribution's quantiles at the mid-points of `levels` equal bins: a uniform byte looked up here
    is a normal deviate discretized to `levels` values (tails cut at about 2.9 std)."""
    from statistics import NormalDist
    nd = NormalDist(0.0, std)
    return np.array([nd.inv_cdf((k + 0.5) / levels) for k in range(levels)], dtype=np.float32)


_NOISE_TABLE = _quantile_table(NOISE_STD)


def _pixel_noise(rng: np.random.Generator, shape: tuple, kind: str) -> np.ndarray:
    """i.i.d. pixel noise of NOISE_STD. "normal": float64 normal deviates (the benchmarks' images, unchanged);
    "bytes": uniform bytes through the quantile table, 4x cheaper: the miniature's training scenes draw it, where
    making an 800 x 600 scene's noise was two thirds of a stage-C batch (benchmarks/results_miniature_throughput.md)."""
    if kind == "normal":
        return rng.normal(0.0, NOISE_STD, size=shape).astype(np.float32)
    if kind == "bytes":
        return _NOISE_TABLE[rng.integers(0, 256, size=shape, dtype=np.uint8)]
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")


def _background(rng: np.random.Generator, size: tuple[int, int], noise: str = "normal") -> Image.Image:
    """Grey, textured and cluttered: smooth blotches + fine noise + desaturated strokes and blobs."""
    W, H = size
    base = rng.uniform(105, 150)
    # low-frequency texture: a coarse random grid upsampled smoothly
    gw, gh = max(2, W // 64), max(2, H // 64)
    coarse = rng.uniform(-22, 22, size=(gh, gw)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(coarse).resize((W, H), Image.BILINEAR))
    arr = base + blotch[..., None] + _pixel_noise(rng, (H, W, 3), noise)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    # clutter: greyish strokes and blobs (slight tint, never as saturated as the targets)
    d = ImageDraw.Draw(img)
    n_clutter = int(rng.integers(30, 70) * (W * H) / (1600 * 1200)) + 10
    for _ in range(n_clutter):
        g = rng.uniform(80, 185)
        col = tuple(int(np.clip(g + rng.uniform(-10, 10), 0, 255)) for _ in range(3))
        x0, y0 = rng.uniform(0, W), rng.uniform(0, H)
        kind = rng.integers(3)
        if kind == 0:
            x1, y1 = x0 + rng.normal(0, W / 6), y0 + rng.normal(0, H / 6)
            d.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(2, 9)))
        else:
            w, h = rng.uniform(20, W / 6), rng.uniform(20, H / 6)
            box = [x0, y0, x0 + w, y0 + h]
            (d.rectangle if kind == 1 else d.ellipse)(box, fill=col)
    return img


def _draw(img: Image.Image, shape: str, color: str, xy: tuple[int, int], s: int) -> list[int]:
    """Paint `shape` at top-left `xy` with side `s`; return its tight [x, y, w, h]."""
    mask = _shape_mask(shape, s)
    img.paste(Image.new("RGB", (s, s), COLORS[color]), xy, mask)
    x0, y0, x1, y1 = mask.getbbox()
    return [xy[0] + x0, xy[1] + y0, x1 - x0, y1 - y0]


# --------------------------------------------------------------------------------------------------
# placement


def _free(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], gap: int) -> bool:
    x, y, s, _ = box
    return all(x + s + gap <= tx or tx + ts + gap <= x or y + s + gap <= ty or ty + ts + gap <= y for tx, ty, ts, _ in taken)


def _place(
    rng: np.random.Generator,
    size: tuple[int, int],
    s: int,
    taken: list[tuple[int, int, int, int]],
    x_range: tuple[float, float] | None = None,
    tries: int = 200,
) -> tuple[int, int] | None:
    """A random top-left corner for an s x s object not touching `taken`; None if none found.

    `x_range` restricts the object's centre x (used to separate relative_position objects).
    """
    W, H = size
    pad = max(2, s // 4)  # keep objects off the border so crops around them exist
    lo, hi = pad, W - s - pad
    if x_range is not None:
        lo, hi = max(lo, math.ceil(x_range[0] - s / 2)), min(hi, math.floor(x_range[1] - s / 2))
    if hi < lo or H - s - pad < pad:
        return None
    for _ in range(tries):
        x, y = int(rng.integers(lo, hi + 1)), int(rng.integers(pad, H - s - pad + 1))
        if _free((x, y, s, s), taken, gap=s // 2):
            return x, y
    return None


def _format_text(question: str, options: Sequence[str]) -> str:
    lines = [question] + [f"({LETTERS[i]}) {o}" for i, o in enumerate(options)] + [INSTRUCTION]
    return "\n".join(lines)


def _sample_size(rng: np.random.Generator, target_px: tuple[int, int]) -> int:
    return int(rng.integers(target_px[0], target_px[1] + 1))


# --------------------------------------------------------------------------------------------------
# items


def make_item(
    rng: np.random.Generator,
    category: str,
    size: tuple[int, int] = (1600, 1200),
    target_px: tuple[int, int] = (40, 80),
    n_distractors: tuple[int, int] = (4, 8),
    question_id: str = "0",
    options_in_image: bool = True,
) -> SyntheticItem:
    """One synthetic record of `category`; all randomness comes from `rng`.

    options_in_image: direct_attributes' wrong colour options are drawn on distractors (placed before the
    others, so a crowded canvas drops the others first): every option's colour is somewhere in the image,
    and the answer cannot be found by eliminating colours the image lacks (decisions D38)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    W, H = int(size[0]), int(size[1])
    if min(W, H) < 2 * target_px[1]:
        raise ValueError(f"image {W}x{H} too small for targets up to {target_px[1]} px")
    img = _background(rng, (W, H))
    taken: list[tuple[int, int, int, int]] = []  # (x, y, s, s) squares already used
    colors = list(COLORS)

    if category == "direct_attributes":
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = colors[rng.integers(len(colors))]
        s = _sample_size(rng, target_px)
        xy = _place(rng, (W, H), s, taken)
        assert xy is not None  # an empty canvas larger than 2 targets always has room
        taken.append((*xy, s, s))
        bboxes = [_draw(img, shape, color, xy, s)]
        targets = [shape]
        wrong = [colors[i] for i in rng.permutation(len(colors)) if colors[i] != color][:3]
        options = [color, *wrong]
        perm = rng.permutation(len(options))
        shown = [options[i] for i in perm]
        label = LETTERS[int(np.flatnonzero(perm == 0)[0])]
        question = f"What is the color of the {shape}?"
        forbidden = lambda sh, co: sh == shape  # noqa: E731 -- the asked shape must be unique
    else:
        sh_a, sh_b = (SHAPES[i] for i in rng.choice(len(SHAPES), size=2, replace=False))
        co_a, co_b = colors[rng.integers(len(colors))], colors[rng.integers(len(colors))]
        name_a, name_b = f"{co_a} {sh_a}", f"{co_b} {sh_b}"
        for _ in range(100):  # A anywhere, then B in the region >= 25% of the width away
            taken.clear()
            s_a, s_b = _sample_size(rng, target_px), _sample_size(rng, target_px)
            xy_a = _place(rng, (W, H), s_a, taken)
            if xy_a is None:
                continue
            taken.append((*xy_a, s_a, s_a))
            cx_a, sep = xy_a[0] + s_a / 2, MIN_REL_SEPARATION * W
            sides = [(0.0, cx_a - sep - 1), (cx_a + sep + 1, float(W))]
            sides = [r for r in sides if r[1] - r[0] > s_b]
            if not sides:
                continue
            xy_b = _place(rng, (W, H), s_b, taken, x_range=sides[rng.integers(len(sides))])
            if xy_b is not None:
                taken.append((*xy_b, s_b, s_b))
                break
        else:
            raise ValueError(f"could not place two objects {MIN_REL_SEPARATION:.0%} of {W}px apart")
        bboxes = [_draw(img, sh_a, co_a, xy_a, s_a), _draw(img, sh_b, co_b, xy_b, s_b)]
        targets = [name_a, name_b]
        centre = lambda b: b[0] + b[2] / 2  # noqa: E731
        correct = "left" if centre(bboxes[0]) < centre(bboxes[1]) else "right"
        shown = ["left", "right"] if rng.integers(2) == 0 else ["right", "left"]
        label = LETTERS[shown.index(correct)]
        question = f"Is the {name_a} on the left or right side of the {name_b}?"
        named = {(sh_a, co_a), (sh_b, co_b)}
        forbidden = lambda sh, co: (sh, co) in named  # noqa: E731 -- named objects stay unique

    # distractors: same size range as targets, so size gives nothing away
    distractors = []
    allowed = [(sh, co) for sh in SHAPES for co in colors if not forbidden(sh, co)]
    must = list(wrong) if category == "direct_attributes" and options_in_image else []
    for _ in range(int(rng.integers(n_distractors[0], n_distractors[1] + 1))):
        if must:   # popped once placed: a failed placement retries the same colour
            co = must[0]
            shapes = [sh for sh in SHAPES if not forbidden(sh, co)]
            sh = shapes[rng.integers(len(shapes))]
        else:
            sh, co = allowed[rng.integers(len(allowed))]
        s = _sample_size(rng, target_px)
        xy = _place(rng, (W, H), s, taken, tries=50)
        if xy is None:  # crowded small canvas: fewer distractors rather than failure
            continue
        taken.append((*xy, s, s))
        if must and co == must[0]:
            must.pop(0)
        distractors.append({"shape": sh, "color": co, "bbox": _draw(img, sh, co, xy, s)})

    return SyntheticItem(
        question_id=str(question_id),
        image=img,
        text=_format_text(question, shown),
        question=question,
        options=list(shown),
        label=label,
        category=category,
        target_objects=targets,
        bboxes=bboxes,
        distractors=distractors,
    )


def generate(
    n: int,
    seed: int = 0,
    size: tuple[int, int] = (1600, 1200),
    categories: Sequence[str] = CATEGORIES,
    target_px: tuple[int, int] = (40, 80),
    n_distractors: tuple[int, int] = (4, 8),
    options_in_image: bool = True,
) -> list[SyntheticItem]:
    """`n` items, categories alternating; item i uses its own Generator seeded by (seed, i),
    so `generate(5)` is a prefix of `generate(10)`."""
    return [
        make_item(
            np.random.default_rng([seed, i]),
            categories[i % len(categories)],
            size=size,
            target_px=target_px,
            n_distractors=n_distractors,
            question_id=str(i),
            options_in_image=options_in_image,
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------------
# V*Bench layout


def _option_sentences(item: SyntheticItem) -> list[str]:
    """Full option sentences, correct first (V*Bench's sibling-json convention)."""
    correct = item.options[LETTERS.index(item.label)]
    rest = [o for o in item.options if o != correct]
    if item.category == "direct_attributes":
        return [f"The color of the {item.target_objects[0]} is {o}." for o in [correct, *rest]]
    a, b = item.target_objects
    return [f"The {a} is on the {o} side of the {b}." for o in [correct, *rest]]


def write_vstar(items: Sequence[SyntheticItem], root: str | Path) -> Path:
    """Write `items` as V*Bench (jsonl + JPEG q95 + sibling json); overwrites, returns the jsonl path.

    Files of an earlier, larger write are not deleted; the jsonl is authoritative.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in items:
        rel = f"{it.category}/syn_{it.question_id}.jpg"
        img_path = root / rel
        img_path.parent.mkdir(parents=True, exist_ok=True)
        it.image.convert("RGB").save(img_path, "JPEG", quality=95)
        meta = {
            "target_object": list(it.target_objects),
            "bbox": [list(map(int, b)) for b in it.bboxes],
            "question": it.question,
            "options": _option_sentences(it),
            "distractors": it.distractors,  # synthetic-only key, ignored by V*Bench readers
        }
        img_path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        rec = {"image": rel, "text": it.text, "category": it.category, "question_id": it.question_id, "label": it.label}
        lines.append(json.dumps(rec))
    out = root / JSONL_NAME
    out.write_text("\n".join(lines) + ("\n" if lines else ""))
    return out


_OPTION_RE = re.compile(r"^\(([A-Z])\)\s?(.*)$")


def read_vstar(root: str | Path) -> list[SyntheticItem]:
    """Read a V*Bench-layout folder back (images opened and converted to RGB).

    Displayed options come from the jsonl `text`; boxes and targets from the sibling json.
    """
    root = Path(root)
    jsonl = root / JSONL_NAME
    if not jsonl.is_file():
        raise FileNotFoundError(f"{jsonl} not found (expected V*Bench layout)")
    items = []
    for n, line in enumerate(jsonl.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        missing = {"image", "text", "category", "question_id", "label"} - rec.keys()
        if missing:
            raise KeyError(f"{jsonl}:{n}: missing field(s) {sorted(missing)}")
        img_path = root / rec["image"]
        meta_path = img_path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        text_lines = rec["text"].split("\n")
        options = [m.group(2) for m in map(_OPTION_RE.match, text_lines) if m]
        with Image.open(img_path) as im:
            image = im.convert("RGB")
        items.append(
            SyntheticItem(
                question_id=str(rec["question_id"]),
                image=image,
                text=rec["text"],
                question=meta.get("question", text_lines[0]),
                options=options,
                label=rec["label"],
                category=rec["category"],
                target_objects=list(meta.get("target_object", [])),
                bboxes=[list(map(int, b)) for b in meta.get("bbox", [])],
                distractors=list(meta.get("distractors", [])),
            )
        )
    return items


def render_crop_oracle(item: SyntheticItem, margin: float = 2.0) -> Image.Image:
    """Crop around the union of the GT boxes, `margin` x its size (same centre), clipped to the image."""
    if not item.bboxes:
        raise ValueError(f"item {item.question_id} has no GT boxes")
    x0 = min(b[0] for b in item.bboxes)
    y0 = min(b[1] for b in item.bboxes)
    x1 = max(b[0] + b[2] for b in item.bboxes)
    y1 = max(b[1] + b[3] for b in item.bboxes)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = max(1.0, (x1 - x0) * margin / 2), max(1.0, (y1 - y0) * margin / 2)
    W, H = item.image.size
    box = (
        max(0, math.floor(cx - hw)),
        max(0, math.floor(cy - hh)),
        min(W, math.ceil(cx + hw)),
        min(H, math.ceil(cy + hh)),
    )
    return item.image.crop(box)
