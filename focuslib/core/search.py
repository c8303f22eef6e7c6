"""The FOCUS algorithm (paper sec. 3, Algorithm box in A.5): `Focus(mllm, config).answer(image, question)`.

  (I)   targets     extract the target object(s) and the question type (focuslib.core.targets)
  (II)  relevance   per target, ONE forward pass of "Is there a {target} in the image?"; the
                    cached values give the object relevance map (focuslib.core.relevance)
  (III) proposals   anchors -> symmetric ROIs -> growth -> ranking -> NMS (focuslib.core.rois)
  (IV)  ranking     existence confidence c_yes of the top n_steps crops in ONE batched forward,
                    with the overrun rule
  (V)   answer      open-ended generation on the best crop / union / canvas (A.5); multi-image models:
                    the global view with the ROIs outlined + each crop, each image captioned (D10)

Everything that happened is returned as a `Trace`. Search forward passes are counted the
paper's way (decisions.md D12): one per target for the map + one per verified crop; target
extraction and the final answer are not search passes but are in `model_calls`.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import torch
from PIL import Image

from focuslib.core import compose as C
from focuslib.core import rois as R
from focuslib.core.config import FocusConfig
from focuslib.core.relevance import object_relevance, random_relevance, smooth_and_downsample
from focuslib.core.trace import begin_answer, RoiTrace, TargetTrace, Trace
from focuslib.core.targets import extract_targets, TargetSpec
from focuslib.images import crop, load_image
from focuslib.models.base import calls_since, MLLM, RelevancePass, TokenLayout, yes_confidence


MapHook = Callable[[str, TokenLayout, torch.Tensor], torch.Tensor]


class Focus:
    """FOCUS on any adapter. `map_hook(target, layout, map) -> map` replaces/edits maps (tests, studies)."""

    def __init__(self, mllm: MLLM, config: FocusConfig | None = None, map_hook: MapHook | None = None):
        self.mllm = mllm
        self.config = config or FocusConfig()
        self.map_hook = map_hook

    # ---- (I) -------------------------------------------------------------------------
    def targets(self, question: str, user_targets: list[str] | None = None) -> TargetSpec:
        gen = (lambda p: self.mllm.generate_text(p)) if not user_targets else None
        return extract_targets(question, generate=gen, user_targets=user_targets)

    # ---- (II) ------------------------------------------------------------------------
    def relevance_map(self, image: Image.Image, target: str) -> tuple[torch.Tensor, TokenLayout, RelevancePass | None]:
        """`[h, w]` map (sum 1, zero on padding cells) and its layout for one target."""
        cfg = self.config
        if cfg.map_variant == "random":
            layout, rp = self.mllm.grid_layout(image), None
            h, w = layout.shape
            m = random_relevance(h * w, seed=cfg.seed).view(h, w)
        else:
            layers = cfg.resolved_layers(self.mllm.num_layers)
            # only the layers the map reads are kept (issue 18: memory at 8K)
            rp = self.mllm.relevance_pass(image, target, keys=cfg.map_variant == "kk", layers=list(layers))
            layout = rp.layout
            feats = rp.keys_norope if cfg.map_variant == "kk" else rp.values
            vis = layout.positions.flatten()
            m = object_relevance(feats, rp.target_idx, vis, layers, cfg.clamp_negative,
                                 cfg.rollout_norm).view(layout.shape).cpu()
            # the map is made: free the per-layer features before verification allocates its batch
            rp = dataclasses.replace(rp, values=[], keys_norope=None)
            del feats
        m = m * layout.valid
        if cfg.gaussian_sigma or cfg.downsample > 1:
            m = smooth_and_downsample(m, cfg.gaussian_sigma, cfg.downsample)
            layout = layout.pooled(cfg.downsample)
            m = m * layout.valid
        if self.map_hook is not None:
            m = self.map_hook(target, layout, m)
        return m / m.sum().clamp_min(1e-30), layout, rp

    # ---- (III) -----------------------------------------------------------------------
    def proposals(self, rel_map: torch.Tensor, layout: TokenLayout) -> list[RoiTrace]:
        cfg = self.config
        out = []
        for roi in R.propose_rois(rel_map, cfg.k, cfg.s_min, cfg.s_max, cfg.s_dist, cfg.t_expand,
                                  cfg.nms_threshold, valid=layout.valid, growth_rule=cfg.growth_rule):
            box = R.grid_to_pixel(roi.grid, layout.cell_boxes)
            if box is not None:
                out.append(RoiTrace(tuple(roi.grid), tuple(box), tuple(roi.anchor), float(roi.score)))
        return out

    # ---- (IV) ------------------------------------------------------------------------
    def _verify(self, image, target: str, rois: list[RoiTrace], idx: list[int]) -> None:
        bs = max(1, self.config.verify_batch_size)
        for chunk in (idx[i:i + bs] for i in range(0, len(idx), bs)):
            crops = [crop(image, rois[i].box) for i in chunk]
            conf = yes_confidence(self.mllm.existence_logits(crops, target))
            for i, c in zip(chunk, conf.tolist()):
                rois[i].confidence = float(c)

    def rank(self, image, tt: TargetTrace, qtype: int | None = None) -> int:
        """Verify crops and pick the best ROI; returns the number of crops verified (search FPs).

        qtype: the TARGET's type (default `tt.qtype`). Type-2 targets verify every proposal and keep those
        above t_type2 whatever n_steps, overrun and `ranking` say: selecting instances by a threshold is
        not the ranking that Tab. 3's "no ranking" removes, and so "no ranking" gives exactly Steps-1
        without overrun (Tab. 3 = Tab. 10, 51.30 / 41.13; decisions.md D8).
        """
        cfg, rois = self.config, tt.rois
        qtype = tt.qtype if qtype is None else qtype
        name = tt.query or tt.target
        if not rois:
            return 0
        if qtype == 2:
            # type-2: every proposal is verified, not limited by n_steps (sec. 3.3)
            tt.verified = list(range(len(rois)))
            self._verify(image, name, rois, tt.verified)
            tt.selected = [i for i in tt.verified if rois[i].confidence > cfg.t_type2]
            tt.best = max(tt.verified, key=lambda i: rois[i].confidence)
            return len(tt.verified)
        if not cfg.ranking or len(rois) == 1 or (cfg.n_steps <= 1 and not cfg.overrun):
            tt.best = 0  # nothing to rank: the top-relevance ROI
            return 0
        first = list(range(min(cfg.n_steps, len(rois))))
        self._verify(image, name, rois, first)  # ONE batched forward for the top n_steps
        tt.verified = list(first)
        if cfg.overrun and all(rois[i].confidence <= 0 for i in first):
            # overrun (C.1): keep going down the list until the model says Yes (l_yes > l_no)
            for i in range(len(first), len(rois)):
                self._verify(image, name, rois, [i])
                tt.verified.append(i)
                if rois[i].confidence > 0:
                    break
        tt.best = max(tt.verified, key=lambda i: (rois[i].confidence, -i))
        return len(tt.verified)

    # ---- (V) -------------------------------------------------------------------------
    def compose(self, image: Image.Image, per_target: list[TargetTrace], qtype: int, notes: list[str]):
        """Final input (A.5). Returns (mode, images, boxes).

        Type-2 targets contribute every ROI above t_type2, type-1 targets their best ROI. As ZoomEye's code
        does (D8/D9/D10), each box is enlarged around its centre to >= final_min_side (then x final_scale)
        and boxes within 2 * merge_buffer px are merged. Multi-image models then get [global view with
        those boxes outlined, one crop per box] (D10). Single-image models: one box -> crop; type-1
        targets closer than t_obj_dist -> their union; type-2 questions or far targets -> canvas of blocks
        scaled to canvas_max_crop_side.
        """
        cfg = self.config
        per_box: list[tuple[int, int, int, int]] = []
        for t in per_target:
            if t.best is None:
                continue
            if t.qtype == 2:
                if not t.selected:
                    notes.append(f"type-2: no ROI of {t.target!r} above t_type2={cfg.t_type2}; using the best one")
                per_box += [t.rois[i].box for i in (t.selected or [t.best])]
            else:
                per_box.append(t.rois[t.best].box)
        if not per_box:
            return "whole", [image], []
        W, H = image.size
        if cfg.final_min_side or cfg.final_scale:
            per_box = [C.enlarge_box(b, cfg.final_min_side or 0, W, H, cfg.final_scale) for b in per_box]
        boxes = C.merge_near(per_box, cfg.merge_buffer)
        if self.mllm.multi_image:
            # A.5: one global view with every ROI outlined + the individual crops; ZoomEye's views (D10)
            return "multi-image", [C.highlight(image, boxes)] + [crop(image, b) for b in boxes], boxes
        far = any(R.box_distance(a, b) > cfg.t_obj_dist for a, b in itertools.combinations(per_box, 2))
        if len(boxes) == 1:
            return ("union" if qtype == 1 and len(per_box) > 1 else "crop"), [crop(image, boxes[0])], boxes
        if qtype == 2 or far:
            canvas, _ = C.compose_canvas(image, boxes, max_crop_side=cfg.canvas_max_crop_side,
                                         gap=cfg.canvas_gap)
            return "canvas", [canvas], boxes
        u = R.union_box(boxes)
        return "union", [crop(image, u)], [u]

    # ---- all together ----------------------------------------------------------------
    def answer(self, image, question: str, targets: list[str] | None = None,
               answer_prompt: str | None = None) -> Trace:
        """Answer `question` about `image` (path or PIL) with FOCUS.

        targets: skip extraction and use these (a leading "all " marks type-2).
        answer_prompt: text for the final answer if it differs from `question` (default: question).
        """
        cfg, m = self.config, self.mllm
        image, before, clock = begin_answer(m, image, question)
        notes: list[str] = []
        with clock("total"):
            with clock("targets"):
                spec = self.targets(question, targets)
            if spec.note:
                notes.append(spec.note)
            per_target: list[TargetTrace] = []
            fp = 0
            for ti, target in enumerate(spec.targets):
                query = spec.query(ti)  # a type-2 target is asked about in the singular (ZoomEye)
                with clock("relevance"):
                    rel, layout, rp = self.relevance_map(image, query)
                fp += rp is not None
                unk = getattr(getattr(m, "tokenizer", None), "unk_token", None)
                if rp is not None and unk and rp.target_tokens and set(rp.target_tokens) <= {unk}:
                    notes.append(f"target {target!r} is unknown to the model's vocabulary (only {unk}): "
                                 "its relevance map is meaningless")
                with clock("proposals"):
                    props = self.proposals(rel, layout)
                tt = TargetTrace(target, rp.target_tokens if rp else [], rel, layout, props,
                                 whole_image_yes=float(yes_confidence(rp.yes_no)) if rp else None,
                                 qtype=spec.type_of(ti), query=query)
                with clock("verify"):
                    fp += self.rank(image, tt)
                per_target.append(tt)
            if not spec.targets:
                notes.append("no target could be extracted from the question: answering on the whole image")
            mode, images, boxes = self.compose(image, per_target, spec.qtype, notes)
            text = answer_prompt or question
            if mode == "multi-image" and cfg.final_captions:
                text = C.final_captions(len(images) - 1) + [text]   # one caption after each image (D10)
            with clock("answer"):
                ans = m.generate(images, text, max_new_tokens=cfg.max_new_tokens)
        calls = calls_since(m, before)
        lr = None if cfg.map_variant == "random" or not spec.targets else cfg.resolved_layers(m.num_layers)
        return Trace(question=question, targets=spec.targets, qtype=spec.qtype, target_source=spec.source,
                     per_target=per_target, chosen_boxes=[tuple(b) for b in boxes], final_mode=mode,
                     final_size=images[0].size, answer=ans, search_fp=fp, model_calls=calls,
                     timings=dict(clock.t), notes=notes, final_images=images,
                     layers=(lr.start, lr.stop) if lr else None)

    def vanilla(self, image, question: str) -> str:
        """The base model on the whole image (the paper's vanilla baseline)."""
        return self.mllm.generate([load_image(image)], question, max_new_tokens=self.config.max_new_tokens)
