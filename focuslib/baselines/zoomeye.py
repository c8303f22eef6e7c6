"""ZoomEye (Shen et al., EMNLP 2025) re-implemented from its paper's description on our adapters.

The image is a tree: the root is the whole image, each node's children split it into 2 (along its longer
side) or 4 (quadrants) equal sub-regions, down to `depth` levels or until a node is no larger than the
vision encoder's base resolution (`min_patch`). Three yes/no confidences, each ONE forward pass reading
the last-position Yes/No logits, c = 2 * (softmax([l_yes, l_no])_yes - 0.5):

  existence  c_e  "Is there a {target} in the image?"         (on every node pushed to the queue)
  latent     c_l  could the target turn up by zooming further  (on every node pushed to the queue)
  answering  c_a  can the question be answered from this view  (on every node popped from the queue)

Type-1 search (per target, best-first): pop the node of highest priority, compute c_a; stop when
c_a >= answer_threshold, else push its children with priority w(d) * c_e + (1 - w(d)) * c_l, where
w(d) = d / (depth + 1) moves the weight from the latent to the existence confidence as the search
goes deeper. Without a stop, the popped node of highest c_a wins. With one target c_a asks about the
question; with several, each target's search stops on a per-target answerability prompt.
Type-2 search ("all X": counting): breadth-first, no c_a; children with priority >= expand_threshold
are expanded, the others (and the leaves) are kept when c_e >= type2_threshold.
Final input (decisions.md D22): single-image models get the crop / union / canvas (FOCUS's A.5 rules);
multi-image models the global view with the boxes outlined + the zoomed union view.

search_fp = every confidence computed (one per image), the paper's count (A.2); target extraction and
the final answer are not search passes (D12). All prompts are ours.
"""
from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import asdict, dataclass

from PIL import Image

from .. import rois as R
from ..images import FocusInputError, crop, load_image
from ..models.base import EXISTENCE_PROMPT, calls_since
from ..search import _Clock, highlight
from ..targets import extract_targets, strip_options
from .common import BaselineTrace, build_preset, confidences

LATENT_PROMPT = "If you zoomed further into this picture, could a {target} turn up somewhere in it? Answer yes or no."
ANSWERING_PROMPT = ("{question}\nDoes this picture, as shown, hold enough detail to answer that question with "
                    "certainty? Answer yes or no.")
TARGET_ANSWERING_PROMPT = ("Is the {target} shown large and sharp enough here to make out its details? "
                           "Answer yes or no.")


@dataclass(frozen=True)
class ZoomEyeConfig:
    depth: int = 5                  # max tree depth (root = 0); A.4 varies 1, 2, 5
    children: int = 4               # sub-regions per node; A.4 varies 2, 4
    answer_threshold: float = 0.6   # stop when c_a >= this
    type2_threshold: float = 0.6    # type-2: keep a region when c_e >= this
    expand_threshold: float = 0.0   # type-2: expand a region when its priority >= this
    min_patch: int = 336            # a node whose longer side is <= this is a leaf (encoder base resolution)
    max_pops: int | None = 100      # safety cap on nodes popped per target (decisions.md D22)
    t_obj_dist: float = 1200.0      # single-image final input: canvas when boxes are farther apart
    max_new_tokens: int = 16

    def weight(self, depth: int) -> float:
        """Weight of the existence confidence at `depth` (the latent one gets 1 - weight)."""
        return depth / (self.depth + 1)


# thresholds per model family (data). answer_threshold: LLaVA 0.6 and Qwen 0.95 as in ZoomEye's
# configurations (notes/peers.md); OV: ours (same as LLaVA). min_patch: each encoder's base input side.
ZOOMEYE_PRESETS: dict[str, dict] = {
    "llava-1.5": dict(answer_threshold=0.6, type2_threshold=0.6, min_patch=336, t_obj_dist=1200.0),
    "llava-onevision": dict(answer_threshold=0.6, type2_threshold=0.6, min_patch=384, t_obj_dist=float("inf")),
    "qwen2.5-vl": dict(answer_threshold=0.95, type2_threshold=0.6, min_patch=448, t_obj_dist=float("inf")),
}


def zoomeye_preset(family: str, **overrides) -> ZoomEyeConfig:
    cfg = build_preset(ZoomEyeConfig, ZOOMEYE_PRESETS, family, "ZoomEye", overrides)
    if cfg.children not in (2, 4):
        raise ValueError(f"children must be 2 or 4, not {cfg.children}")
    if cfg.depth < 1:
        raise ValueError(f"depth must be >= 1, not {cfg.depth}")
    return cfg


@dataclass
class Node:
    box: tuple[int, int, int, int]
    depth: int
    c_e: float | None = None
    c_l: float | None = None
    c_a: float | None = None
    priority: float | None = None
    parent: int | None = None


def split(box, children: int) -> list[tuple[int, int, int, int]]:
    """2 halves along the longer side, or 4 quadrants; [] when the box is too small to split."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    xm, ym = x0 + w // 2, y0 + h // 2
    if children == 2:
        if w >= h:
            return [(x0, y0, xm, y1), (xm, y0, x1, y1)] if w >= 2 else []
        return [(x0, y0, x1, ym), (x0, ym, x1, y1)] if h >= 2 else []
    if w < 2 or h < 2:
        return []
    return [(x0, y0, xm, ym), (xm, y0, x1, ym), (x0, ym, xm, y1), (xm, ym, x1, y1)]


class ZoomEye:
    """`ZoomEye(mllm, config).answer(image, question)` -> BaselineTrace."""

    method = "zoomeye"

    def __init__(self, mllm, config: ZoomEyeConfig | None = None):
        self.mllm = mllm
        self.config = config or zoomeye_preset(getattr(mllm, "family", ""))

    def expandable(self, node: Node) -> bool:
        x0, y0, x1, y1 = node.box
        return (node.depth < self.config.depth and max(x1 - x0, y1 - y0) > self.config.min_patch
                and bool(split(node.box, self.config.children)))

    def _push_children(self, image, nodes: list[Node], parent: int, target: str) -> list[int]:
        """Create the children of nodes[parent] and score them: c_e and c_l (2 FPs per child)."""
        cfg, p = self.config, nodes[parent]
        boxes = split(p.box, cfg.children)
        crops = [crop(image, b) for b in boxes]
        ce = confidences(self.mllm, crops, EXISTENCE_PROMPT.format(target=target), "zoomeye_existence")
        cl = confidences(self.mllm, crops, LATENT_PROMPT.format(target=target), "zoomeye_latent")
        w = cfg.weight(p.depth + 1)
        out = []
        for b, e, l in zip(boxes, ce, cl):
            nodes.append(Node(box=b, depth=p.depth + 1, c_e=e, c_l=l, priority=w * e + (1 - w) * l, parent=parent))
            out.append(len(nodes) - 1)
        return out

    def search_type1(self, image, target: str, stop_text: str) -> tuple[list[Node], list[int], int, bool]:
        """Best-first search. Returns (nodes, popped indices, chosen index, stopped by c_a)."""
        cfg = self.config
        nodes = [Node(box=(0, 0, image.width, image.height), depth=0)]
        tie = itertools.count()
        heap = [(float("-inf"), next(tie), 0)]
        popped: list[int] = []
        while heap and (cfg.max_pops is None or len(popped) < cfg.max_pops):
            _, _, i = heapq.heappop(heap)
            node = nodes[i]
            node.c_a = confidences(self.mllm, [crop(image, node.box)], stop_text, "zoomeye_answering")[0]
            popped.append(i)
            if node.c_a >= cfg.answer_threshold:
                return nodes, popped, i, True
            if self.expandable(node):
                for j in self._push_children(image, nodes, i, target):
                    heapq.heappush(heap, (-nodes[j].priority, next(tie), j))
        best = max(popped, key=lambda i: (nodes[i].c_a, -popped.index(i)))
        return nodes, popped, best, False

    def search_type2(self, image, target: str) -> tuple[list[Node], list[int], list[int]]:
        """Breadth-first search collecting every region that holds the target. Returns (nodes, expanded, kept)."""
        cfg = self.config
        nodes = [Node(box=(0, 0, image.width, image.height), depth=0)]
        queue, expanded, kept = [0], [], []
        while queue and (cfg.max_pops is None or len(expanded) < cfg.max_pops):
            i = queue.pop(0)
            if not self.expandable(nodes[i]):
                continue
            expanded.append(i)
            for j in self._push_children(image, nodes, i, target):
                n = nodes[j]
                if self.expandable(n) and n.priority >= cfg.expand_threshold:
                    queue.append(j)
                elif n.c_e >= cfg.type2_threshold:
                    kept.append(j)
        return nodes, expanded, kept

    # ---- final input ---------------------------------------------------------------------
    def compose(self, image: Image.Image, boxes: list, qtype: int):
        cfg = self.config
        full = (0, 0, image.width, image.height)
        boxes = [tuple(b) for b in boxes]
        if qtype == 2:
            boxes = R.merge_overlapping(boxes)
        if not boxes or all(b == full for b in boxes):
            return "whole", [image], []
        if self.mllm.multi_image:
            return "multi-image", [highlight(image, boxes), crop(image, R.union_box(boxes))], boxes
        if len(boxes) == 1:
            return "crop", [crop(image, boxes[0])], boxes
        far = any(R.box_distance(a, b) > cfg.t_obj_dist for a, b in itertools.combinations(boxes, 2))
        if qtype == 2 or far:
            canvas, _ = R.compose_canvas(image, boxes)
            return "canvas", [canvas], boxes
        u = R.union_box(boxes)
        return "union", [crop(image, u)], [u]

    # ---- all together --------------------------------------------------------------------
    def answer(self, image, question: str, targets: list[str] | None = None,
               answer_prompt: str | None = None) -> BaselineTrace:
        if not isinstance(question, str) or not question.strip():
            raise FocusInputError("the question is empty")
        image = load_image(image)
        m, cfg = self.mllm, self.config
        before = Counter(m.calls)
        clock = _Clock(getattr(m, "device", "cpu"))
        notes: list[str] = []
        per_target, boxes = [], []
        fp_before = _fp(m.calls)
        with clock("total"):
            with clock("targets"):
                gen = (lambda p: m.generate_text(p)) if not targets else None
                spec = extract_targets(question, generate=gen, user_targets=targets)
            if spec.note:
                notes.append(spec.note)
            bare = strip_options(question) or question
            with clock("search"):
                for target in spec.targets:
                    if spec.qtype == 2:
                        nodes, expanded, kept = self.search_type2(image, target)
                        chosen = kept
                        if not kept:
                            scored = [i for i, n in enumerate(nodes) if n.c_e is not None]
                            if scored:
                                chosen = [max(scored, key=lambda i: nodes[i].c_e)]
                                notes.append(f"type-2: no region of {target!r} above type2_threshold; "
                                             "using the one of highest existence confidence")
                        examined, stopped = expanded, None
                    else:
                        stop = (ANSWERING_PROMPT.format(question=bare) if len(spec.targets) == 1
                                else TARGET_ANSWERING_PROMPT.format(target=target))
                        nodes, examined, best, stopped = self.search_type1(image, target, stop)
                        chosen = [best]
                        if not stopped:
                            notes.append(f"{target!r}: no view reached answer_threshold="
                                         f"{cfg.answer_threshold}; using the one of highest c_a")
                    boxes += [nodes[i].box for i in chosen]
                    per_target.append({
                        "target": target, "rois": [asdict(n) for n in nodes],
                        "verified": [i for i in examined if i != 0] or list(chosen),
                        "best": chosen[0] if chosen else None, "selected": list(chosen),
                        "stopped": stopped})
            if not spec.targets:
                notes.append("no target could be extracted from the question: answering on the whole image")
            mode, images, final_boxes = self.compose(image, boxes, spec.qtype)
            with clock("answer"):
                ans = m.generate(images, answer_prompt or question, max_new_tokens=cfg.max_new_tokens)
        fp = _fp(m.calls) - fp_before
        return BaselineTrace(method=self.method, question=question, targets=spec.targets, qtype=spec.qtype,
                             target_source=spec.source, per_target=per_target,
                             chosen_boxes=[tuple(b) for b in final_boxes], final_mode=mode,
                             final_size=images[0].size, answer=ans, search_fp=fp,
                             model_calls=calls_since(m, before), timings=dict(clock.t), notes=notes,
                             extra={"config": asdict(cfg)}, final_images=images)


FP_PURPOSES = ("zoomeye_existence", "zoomeye_latent", "zoomeye_answering")


def _fp(calls) -> int:
    return sum(calls.get(k, 0) for k in FP_PURPOSES)


def expected_fp_full_tree(depth: int, children: int) -> int:
    """Search FPs of one type-1 target when nothing stops the search and no size limit applies:
    every node popped (1 FP each) and every non-root node scored (2 FPs each)."""
    n = sum(children ** d for d in range(depth + 1))
    return n + 2 * (n - 1)


__all__ = ["ZoomEye", "ZoomEyeConfig", "ZOOMEYE_PRESETS", "zoomeye_preset", "split", "expected_fp_full_tree",
           "LATENT_PROMPT", "ANSWERING_PROMPT", "TARGET_ANSWERING_PROMPT"]
