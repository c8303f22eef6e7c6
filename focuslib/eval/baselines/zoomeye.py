"""ZoomEye (Shen et al., EMNLP 2025) on our adapters, step for step as its official code runs
(om-ai-lab/ZoomEye; the lines we follow are cited in docs/decisions.md D25). Our code and prompts.

Tree (ZoomEye/tree.py): the root is the whole image; a node is split into a 2x2 grid, or into 1x4 /
4x1 strips when h/w >= 2 / <= 0.5 (integer strides, the last cell takes the remainder), until its
longer side is < `min_patch` (the encoder's input side). D = min(real tree depth, `depth`).
Every confidence is ONE forward pass reading the last-position Yes/No logits,
c = 2 * (softmax([l_yes, l_no])_yes - 0.5), of a view of one node:

  existence  c_e  is the target in the view
  latent     c_l  could the target turn up by zooming further into the view
  answering  c_a  can the question be answered from the view

View of a node: single-image models (LLaVA-1.5) see the node's patch (the box grown to at least
`min_patch` per side around its centre, clipped to the image); multi-image models (OneVision, Qwen) see
two images: the global view with the patch outlined in red, and the outlined patch enlarged, each followed
by its caption (`ZOOM_CAPTIONS`), then the question. The root is the whole image.

Type-1 (per target, best-first over a list re-sorted by priority after every pop): pop the head; unless
it is the root of a several-target search on a single-image model, c_a; stop when c_a >= the answering
threshold (with several targets: keep going until a bottom node was reached). Children are queued and
get c_e and c_l when the queue is next sorted: priority = w c_e + (1 - w) c_l, w(d) = (1-b) d^2/D^2 + b.
After 3*D pops (then every 2 more) the threshold falls by 0.1, 0.1, 0.2, 0.2, ... and the popped node of
highest c_a at or above it is taken; below the lower bound (0) the search ends. The deepest candidate
is the target's view. Type-2 ("all X"): post-order to depth 2, c_e on every node (root included); a
node is kept when its c_e >= max(0.6, every c_e below it). Multi-image models first ask c_a on the
whole image for each of several targets and skip the search when any target is answerable there.

search_fp = every confidence computed, one forward each (the official code runs one per call); target
extraction and the final answer are not search passes (D12).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from PIL import Image, ImageDraw

from focuslib.core.rois import union_box
from focuslib.core.targets import extract_targets, strip_options
from focuslib.core.trace import BaselineTrace, begin_answer
from focuslib.eval.baselines.common import build_preset, confidences, view_confidence
from focuslib.images import crop, pad_to_square
from focuslib.models.base import calls_since, EXISTENCE_PROMPT


# ---- prompts (ours; the official code's roles, not its wording) ------------------------------
LATENT_PROMPT = "If you zoomed further into this picture, could a {target} turn up somewhere in it? Answer yes or no."
ANSWERING_PROMPT = ("{question}\nDoes this picture, as shown, hold enough detail to answer that question with "
                    "certainty? Answer yes or no.")
DECOMPOSED_QUESTION = "What does the {target} look like?"   # c_a's question for one of several targets
# two-image views (multi-image models): a caption after EACH image, then the question -- the structure of the
# official "zoom" pre_information (image, caption, image, caption, question; D25); adapters' prompt(list, 2)
ZOOM_CAPTIONS = ("Here is the whole picture; the part outlined in red is the region under inspection.",
                 "Here is that outlined region, enlarged.")
ZOOM_EXISTENCE_PROMPT = "Is there a {target} in the enlarged region?"
ZOOM_LATENT_PROMPT = ("Given the enlarged region and where it lies in the whole picture, could a {target} turn up "
                      "if you zoomed further into that region? Answer yes or no.")
ZOOM_ANSWERING_PROMPT = ("{question}\nDo these images hold enough detail to answer that question with certainty? "
                         "Answer yes or no.")
OUTLINE = (255, 0, 0)   # official: always red (its 'blue' switch assigns a local name, D25)

FP_PURPOSES = ("zoomeye_existence", "zoomeye_latent", "zoomeye_answering", "zoomeye_filter")


@dataclass(frozen=True)
class ZoomEyeConfig:
    depth: int = 5                     # depth limit (official: 5; A.4 varies 1, 2, 5)
    children: int = 4                  # 4: 2x2 / 1x4 / 4x1 (official); 2: halves (FOCUS A.4 variant, ours)
    answer_threshold: float = 0.6      # answering threshold at the start
    answer_threshold_lower: float = 0.0  # the search ends once the lowered threshold is below this
    threshold_decrease: tuple[float, ...] = (0.1, 0.1, 0.2)  # successive drops; the last one repeats
    pops_per_depth: int = 3            # the first drop after pops_per_depth * D pops
    pop_interval: int = 2              # then one drop every pop_interval pops
    bias: float = 0.2                  # b in w(d) = (1-b) d^2/D^2 + b
    type2_threshold: float = 0.6       # type-2: keep a node when c_e >= this (and >= every c_e below it)
    type2_depth: int = 2               # type-2: post-order down to this depth (capped by `depth`)
    min_patch: int = 336               # encoder input side: leaf below it, views grown to it
    patch_scale: float | None = None   # views grown by this factor (multi-image models 1.2)
    side_threshold: int = 1000         # single-image final input: two blocks when the union is longer
    merge_buffer: int = 50             # views closer than this (px) merge into their union
    pad_global: bool = True            # multi-image global view: padded to square (OV) or not (Qwen)
    max_new_tokens: int = 16

    def weight(self, depth: int, max_depth: int) -> float:
        """Weight of c_e at `depth` in a tree of depth `max_depth` (c_l gets 1 - weight)."""
        if max_depth <= 0:
            return self.bias
        return (1.0 - self.bias) / max_depth ** 2 * depth ** 2 + self.bias


# per family (data): ZoomEye/eval/perform_zoom_eye.py's settings for its LLaVA-1.5 (local), LLaVA-OV
# (global-local) and Qwen2.5-VL models; min_patch = each encoder's input side (Qwen: 448, as hard-coded there).
ZOOMEYE_PRESETS: dict[str, dict] = {
    "llava-1.5": dict(answer_threshold=0.6, bias=0.2, min_patch=336, patch_scale=None),
    "llava-onevision": dict(answer_threshold=0.6, bias=0.6, min_patch=384, patch_scale=1.2),
    "qwen2.5-vl": dict(answer_threshold=0.95, threshold_decrease=(0.05, 0.1, 0.2), bias=0.6, min_patch=448,
                       patch_scale=1.2, pad_global=False),
}


def zoomeye_preset(family: str, **overrides) -> ZoomEyeConfig:
    cfg = build_preset(ZoomEyeConfig, ZOOMEYE_PRESETS, family, "ZoomEye", overrides)
    if cfg.children not in (2, 4):
        raise ValueError(f"children must be 2 or 4, not {cfg.children}")
    if cfg.depth < 1:
        raise ValueError(f"depth must be >= 1, not {cfg.depth}")
    if not cfg.threshold_decrease or min(cfg.threshold_decrease) <= 0:
        raise ValueError("threshold_decrease must be positive drops")
    return cfg


# ---- the tree ---------------------------------------------------------------------------------
Box = tuple[int, int, int, int]


def grid(box: Box, children: int) -> tuple[int, int]:
    """(columns, rows) a node is split into: 4 -> 2x2, or 1x4 / 4x1 strips for h/w >= 2 / <= 0.5;
    2 -> halves along the longer side."""
    w, h = box[2] - box[0], box[3] - box[1]
    if children == 2:
        return (2, 1) if w >= h else (1, 2)
    r = h / w
    return (1, 4) if r >= 2 else (4, 1) if r <= 0.5 else (2, 2)


def split(box: Box, children: int) -> list[Box]:
    """Children of `box`, row by row; integer strides, the last column / row takes the remainder.
    [] when a stride would be 0."""
    x0, y0, x1, y1 = box
    nx, ny = grid(box, children)
    sx, sy = (x1 - x0) // nx, (y1 - y0) // ny
    if sx == 0 or sy == 0:
        return []
    xs = [x0 + i * sx for i in range(nx)] + [x1]
    ys = [y0 + j * sy for j in range(ny)] + [y1]
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(ny) for i in range(nx)]


def children_of(box: Box, cfg: ZoomEyeConfig) -> list[Box]:
    """The real tree's children: none once the longer side is < min_patch."""
    if max(box[2] - box[0], box[3] - box[1]) < cfg.min_patch:
        return []
    return split(box, cfg.children)


def tree_depth(box: Box, cfg: ZoomEyeConfig, limit: int) -> int:
    """min(depth of the real tree under `box`, limit)."""
    if limit <= 0:
        return 0
    kids = children_of(box, cfg)
    return 1 + max(tree_depth(k, cfg, limit - 1) for k in kids) if kids else 0


def grow(box: Box, width: int, height: int, side: int, scale: float | None) -> Box:
    """A node's view: at least `side` per side (times `scale`) around the box centre; left/top clamped
    at 0, right/bottom clipped to the image (so it can shrink at the far edges)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = int(x0 + w / 2), int(y0 + h / 2)
    pw, ph = max(w, side), max(h, side)
    if scale is not None:
        pw, ph = int(pw * scale), int(ph * scale)
    left, top = max(0, cx - pw // 2), max(0, cy - ph // 2)
    return (left, top, min(left + pw, width), min(top + ph, height))


def _near(a: Box, b: Box, buffer: int) -> bool:
    """Do a and b overlap once both are grown by `buffer` on every side."""
    return (min(a[2], b[2]) + buffer > max(a[0], b[0]) - buffer
            and min(a[3], b[3]) + buffer > max(a[1], b[1]) - buffer)


def merge_near(boxes: list[Box], buffer: int) -> list[Box]:
    """Repeatedly replace the first pair of near boxes (in list order) by their union."""
    boxes = [tuple(b) for b in boxes]
    changed = True
    while changed:
        changed, out, used = False, [], set()
        for i, a in enumerate(boxes):
            if i in used:
                continue
            for j, b in enumerate(boxes):
                if j != i and j not in used and _near(a, b, buffer):
                    out.append(union_box([a, b]))
                    used.update((i, j))
                    changed = True
                    break
            else:
                out.append(a)
        boxes = out
    return boxes


def two_blocks(image: Image.Image, a: Box, b: Box, side: int, fill) -> Image.Image:
    """Two far-apart views on one 2side x 2side canvas: left-most first, each resized to side x side,
    placed side by side with half their vertical centre offset (clipped to +-side) kept."""
    if a[0] > b[0]:
        a, b = b, a
    off = max(-side, min(side, (b[3] + b[1]) // 2 - (a[3] + a[1]) // 2))
    canvas = Image.new("RGB", (2 * side, 2 * side), fill)
    canvas.paste(crop(image, a).resize((side, side)), (0, side // 2 - off // 2))
    canvas.paste(crop(image, b).resize((side, side)), (side, side // 2 + off // 2))
    return canvas


@dataclass
class Node:
    box: Box
    depth: int
    parent: int | None = None
    c_e: float | None = None
    c_l: float | None = None
    c_a: float | None = None
    w: float | None = None
    priority: float | None = None
    children: list[int] = field(default_factory=list)


@dataclass
class Type1Result:
    nodes: list[Node]
    popped: list[int]            # pop order (indices into nodes)
    chosen: int | None           # the deepest candidate, None when nothing qualified
    candidates: list[int]
    max_depth: int               # D
    thresholds: list[tuple[int, float]] = field(default_factory=list)  # (pop count, lowered threshold)
    stopped: bool = False        # a node reached the answering threshold in force


class ZoomEye:
    """`ZoomEye(mllm, config).answer(image, question)` -> BaselineTrace."""

    method = "zoomeye"

    def __init__(self, mllm, config: ZoomEyeConfig | None = None):
        self.mllm = mllm
        self.config = config or zoomeye_preset(getattr(mllm, "family", ""))

    @property
    def multi(self) -> bool:
        return bool(getattr(self.mllm, "multi_image", False))

    @property
    def fill(self) -> tuple[int, int, int]:
        return tuple(getattr(self.mllm, "fill", None) or (127, 127, 127))

    # ---- views and confidences ----------------------------------------------------------
    def zoom_pair(self, image: Image.Image, boxes: list[Box]) -> list[Image.Image]:
        """Multi-image view of `boxes` (already grown): [global view with each box outlined, the outlined
        union enlarged]. Outline width = square side // 120, drawn just outside each box."""
        square, (ox, oy) = pad_to_square(image, self.fill)
        square = square.copy()
        t = square.width // 120
        draw, drawn = ImageDraw.Draw(square), []
        for b in boxes:
            x0, y0 = max(0, b[0] + ox - t), max(0, b[1] + oy - t)
            x1, y1 = min(square.width, b[2] + ox + t), min(square.height, b[3] + oy + t)
            draw.rectangle((x0, y0, x1, y1), outline=OUTLINE, width=t)
            drawn.append((x0, y0, x1, y1))
        zoomed = square.crop(union_box(drawn))
        side = self.config.min_patch
        if self.config.pad_global:
            return [square.resize((side, side)), zoomed]
        return [_long_side(square.crop((ox, oy, ox + image.width, oy + image.height)), side), zoomed]

    def root_view(self, image: Image.Image, small: bool = False) -> Image.Image:
        """The whole image; `small` (multi-image models' filter pass): shrunk to the encoder's input."""
        if not small:
            return image
        side = self.config.min_patch
        if self.config.pad_global:
            return pad_to_square(image, self.fill)[0].resize((side, side))
        return _long_side(image, side)

    def view(self, image: Image.Image, node: Node) -> list[Image.Image]:
        if node.depth == 0:
            return [self.root_view(image)]
        cfg = self.config
        patch = grow(node.box, image.width, image.height, cfg.min_patch, cfg.patch_scale)
        return self.zoom_pair(image, [patch]) if self.multi else [crop(image, patch)]

    def score(self, image: Image.Image, nodes: list[Node], kind: str, text: dict[str, str]) -> list[float]:
        """One confidence per node (one forward each); `text` holds the single- and two-image questions.
        Single views go in one batch (still one FP per image), two-image views one call each, captioned."""
        purpose = f"zoomeye_{kind}"
        views = [self.view(image, n) for n in nodes]
        if all(len(v) == 1 for v in views):
            return confidences(self.mllm, [v[0] for v in views], text["one"], purpose)
        return [view_confidence(self.mllm, v, text["one"] if len(v) == 1 else zoom_text(text["two"]), purpose)
                for v in views]

    def _prioritise(self, image, nodes: list[Node], todo: list[int], target: str, max_depth: int) -> None:
        """c_e then c_l of each queued node not scored yet, and its priority."""
        if not todo:
            return
        group = [nodes[i] for i in todo]
        ce = self.score(image, group, "existence", dict(one=EXISTENCE_PROMPT.format(target=target),
                                                        two=ZOOM_EXISTENCE_PROMPT.format(target=target)))
        cl = self.score(image, group, "latent", dict(one=LATENT_PROMPT.format(target=target),
                                                     two=ZOOM_LATENT_PROMPT.format(target=target)))
        for n, e, l in zip(group, ce, cl):
            n.c_e, n.c_l, n.w = e, l, self.config.weight(n.depth, max_depth)
            n.priority = n.w * e + (1 - n.w) * l

    def _answering(self, image, node: Node, question: str) -> float:
        text = dict(one=ANSWERING_PROMPT.format(question=question),
                    two=ZOOM_ANSWERING_PROMPT.format(question=question))
        return self.score(image, [node], "answering", text)[0]

    def _expand(self, nodes: list[Node], i: int) -> list[int]:
        for b in children_of(nodes[i].box, self.config):
            nodes.append(Node(box=b, depth=nodes[i].depth + 1, parent=i))
            nodes[i].children.append(len(nodes) - 1)
        return nodes[i].children

    # ---- type-1: best-first with the lowering threshold ----------------------------------
    def search_type1(self, image, target: str, question: str, skip_root: bool = False,
                     to_bottom: bool = False) -> Type1Result:
        """skip_root: no c_a at the root; to_bottom: a candidate ends the search only once a bottom node
        (leaf or depth D) has been popped (several targets)."""
        cfg = self.config
        root: Box = (0, 0, image.width, image.height)
        D = tree_depth(root, cfg, cfg.depth)
        nodes = [Node(box=root, depth=0, c_a=-1.0)]
        queue, popped, cands, res = [0], [], [], Type1Result(nodes, [], None, [], D)
        threshold, drops, limit = cfg.answer_threshold, list(cfg.threshold_decrease), cfg.pops_per_depth * D
        bottom = False
        while queue:
            i = queue.pop(0)
            node = nodes[i]
            popped.append(i)
            hit = False
            if not (skip_root and node.depth == 0):
                node.c_a = self._answering(image, node, question)
                hit = node.c_a >= threshold
            if hit:
                cands.append(i)
                res.stopped = True
                if not to_bottom or bottom:
                    break
            elif len(popped) >= limit:
                threshold -= drops[0]          # same float steps as the official code
                if len(drops) > 1:
                    drops.pop(0)
                limit += cfg.pop_interval
                res.thresholds.append((len(popped), threshold))
                _take_best(nodes, popped, cands, threshold)
                if cands or threshold < cfg.answer_threshold_lower:
                    break
            kids = self._expand(nodes, i) if node.depth < D else []
            if not kids:
                bottom = True
                if to_bottom and cands:
                    break
            queue += kids
            self._prioritise(image, nodes, [j for j in queue if nodes[j].priority is None], target, D)
            queue.sort(key=lambda j: nodes[j].priority, reverse=True)   # stable: ties keep queue order
        res.popped, res.candidates = popped, list(cands)
        if cands:
            res.chosen = sorted(cands, key=lambda j: nodes[j].depth, reverse=True)[0]
        return res

    # ---- type-2: post-order existence ------------------------------------------------------
    def search_type2(self, image, target: str) -> tuple[list[Node], list[int], list[int]]:
        """Returns (nodes, scoring order, kept)."""
        cfg = self.config
        limit = min(cfg.type2_depth, cfg.depth)
        nodes = [Node(box=(0, 0, image.width, image.height), depth=0)]
        order, kept = [], []
        prompt = dict(one=EXISTENCE_PROMPT.format(target=target), two=ZOOM_EXISTENCE_PROMPT.format(target=target))

        def visit(i: int) -> float:
            best = -1.0
            if nodes[i].depth < limit:
                for j in list(self._expand(nodes, i)):
                    best = max(best, visit(j))
            nodes[i].c_e = self.score(image, [nodes[i]], "existence", prompt)[0]
            order.append(i)
            if nodes[i].c_e >= max(best, cfg.type2_threshold):
                kept.append(i)
            return max(best, nodes[i].c_e)

        visit(0)
        return nodes, order, kept

    # ---- the few-target filter of multi-image models ----------------------------------------
    def answerable_on_whole(self, image, targets: list[tuple[str, int]]) -> list[float]:
        """c_a of each type-1 target's question on the shrunk whole image (one FP each; "all X" targets are
        not asked); only with >= 2 targets."""
        if len(targets) < 2:
            return []
        view = self.root_view(image, small=True)
        return [confidences(self.mllm, [view], ANSWERING_PROMPT.format(question=DECOMPOSED_QUESTION.format(
            target=t)), "zoomeye_filter")[0] for t, kind in targets if kind == 1]

    # ---- final input ---------------------------------------------------------------------
    def compose(self, image: Image.Image, nodes: list[Node]):
        """(mode, images, boxes) from the searched nodes, as the official final input."""
        cfg = self.config
        if not nodes or any(n.depth == 0 for n in nodes) and (self.multi or len(nodes) == 1):
            return "whole", [image], []
        W, H = image.size
        boxes = merge_near([grow(n.box, W, H, cfg.min_patch, cfg.patch_scale) for n in nodes], cfg.merge_buffer)
        if self.multi:
            return "multi-image", self.zoom_pair(image, boxes), boxes
        u = union_box(boxes)
        if max(u[2] - u[0], u[3] - u[1]) > cfg.side_threshold and len(boxes) == 2:
            return "canvas", [two_blocks(image, boxes[0], boxes[1], cfg.min_patch, self.fill)], boxes
        return "crop", [crop(image, u)], [u]

    # ---- all together --------------------------------------------------------------------
    def answer(self, image, question: str, targets: list[str] | None = None,
               answer_prompt: str | None = None) -> BaselineTrace:
        m, cfg = self.mllm, self.config
        image, before, clock = begin_answer(m, image, question)
        notes: list[str] = []
        per_target, found = [], []
        extra: dict = {"config": asdict(cfg)}
        fp_before = _fp(m.calls)
        with clock("total"):
            with clock("targets"):
                gen = (lambda p: m.generate_text(p)) if not targets else None
                spec = extract_targets(question, generate=gen, user_targets=targets)
            if spec.note:
                notes.append(spec.note)
            bare = strip_options(question) or question
            # (target, type) -- type 2 ("all X") per target, as the official code decides it
            todo = [(spec.query(i), spec.type_of(i)) for i in range(len(spec.targets))]   # "all" X: singular
            with clock("search"):
                if self.multi:
                    conf = self.answerable_on_whole(image, todo)
                    extra["whole_image_c_a"] = conf
                    if any(c >= cfg.answer_threshold for c in conf):
                        notes.append("a target is answerable on the whole image: no search")
                        todo = []
                one = len(todo) == 1 and todo[0][1] == 1
                for target, kind in todo:
                    if kind == 2:
                        nodes, order, kept = self.search_type2(image, target)
                        found += [nodes[i] for i in kept]
                        per_target.append({"target": target, "rois": [asdict(n) for n in nodes],
                                           "verified": [i for i in order if i != 0] or list(kept),
                                           "best": kept[0] if kept else None, "selected": list(kept),
                                           "stopped": None})
                        continue
                    q = bare if one else DECOMPOSED_QUESTION.format(target=target)
                    r = self.search_type1(image, target, q, skip_root=not one and not self.multi, to_bottom=not one)
                    if r.chosen is None:
                        notes.append(f"{target!r}: no view reached the answering threshold: not in the final input")
                    else:
                        found.append(r.nodes[r.chosen])
                    per_target.append({"target": target, "rois": [asdict(n) for n in r.nodes],
                                       "verified": [i for i in r.popped if i != 0] or [0],
                                       "best": r.chosen, "selected": [] if r.chosen is None else [r.chosen],
                                       "stopped": r.stopped, "popped": r.popped, "num_pop": len(r.popped),
                                       "max_depth": r.max_depth, "thresholds": r.thresholds})
            if not spec.targets:
                notes.append("no target could be extracted from the question: answering on the whole image")
            mode, images, final_boxes = self.compose(image, found)
            prompt = answer_prompt or question
            with clock("answer"):
                ans = m.generate(images, zoom_text(prompt) if len(images) == 2 else prompt,
                                 max_new_tokens=cfg.max_new_tokens)
        fp = _fp(m.calls) - fp_before
        return BaselineTrace(method=self.method, question=question, targets=spec.targets, qtype=spec.qtype,
                             target_source=spec.source, per_target=per_target,
                             chosen_boxes=[tuple(b) for b in final_boxes], final_mode=mode,
                             final_size=images[-1].size, answer=ans, search_fp=fp,
                             model_calls=calls_since(m, before), timings=dict(clock.t), notes=notes,
                             extra=extra, final_images=images)


def zoom_text(question: str) -> list[str]:
    """The text of a two-image prompt: [caption of the global view, caption of the zoomed view, question]."""
    return [*ZOOM_CAPTIONS, question]


def _take_best(nodes: list[Node], popped: list[int], cands: list[int], threshold: float) -> None:
    """Add every popped node with c_a >= threshold to `cands`, then keep only the one of highest c_a."""
    for i in popped:
        if nodes[i].c_a is not None and nodes[i].c_a >= threshold and i not in cands:
            cands.append(i)
    if len(cands) > 1:
        cands.sort(key=lambda i: nodes[i].c_a, reverse=True)
        del cands[1:]


def _long_side(image: Image.Image, side: int) -> Image.Image:
    """Resized so the longer side is `side`, aspect kept."""
    w, h = image.size
    return image.resize((side, int(h * side / w)) if w > h else (int(w * side / h), side))


def _fp(calls) -> int:
    return sum(calls.get(k, 0) for k in FP_PURPOSES)


def expected_fp_full_tree(depth: int, children: int) -> int:
    """Search FPs of one single-target type-1 search that pops every node of a full tree (no stop, no
    size limit, a schedule that never ends it early): one c_a per node, c_e + c_l per non-root node."""
    n = sum(children ** d for d in range(depth + 1))
    return n + 2 * (n - 1)


__all__ = ["ZoomEye", "ZoomEyeConfig", "ZOOMEYE_PRESETS", "zoomeye_preset", "split", "grid", "grow", "merge_near",
           "tree_depth", "expected_fp_full_tree", "LATENT_PROMPT", "ANSWERING_PROMPT", "DECOMPOSED_QUESTION",
           "ZOOM_CAPTIONS", "zoom_text", "FP_PURPOSES"]
