"""ViCrop ("MLLMs know where to look", Zhang et al., ICLR 2025), step for step as its official code does it
(saccharomycetes/mllms_know: run.py `vicrop_qa`, llava_methods.py, utils.py; read, not copied -- docs/decisions.md
D22 and D24 give file + line for every step). Our own code on our adapters.

Per question (LLaVA-1.5 numbers; other families use their encoder's base side and the same depth fraction):

1. One greedy answer on the FULL image (the original's `ori_generation`). It is not ViCrop's answer, but the
   original runs it and the FOCUS paper counts it: FP = maps + 1, so rel = 2 x grad - 1 (Tab. 10 / 13).
2. A map over the image tokens per image (or per tile with "-high"), all read at decoder layer 14 of 32 from
   the row of the LAST prompt token, heads averaged. The map prompt is the bare question followed by
   "Answer the question using a single word or phrase." (the original's `short_prompt`).
     rel-att   A(question) / A(generic prompt), generic = "Write a general description of the image." + the
               same suffix                                            (2 forwards per image / tile)
     grad-att  mean over heads of A * ReLU(d log p(y) / dA), y = the greedy next token, i.e. the gradient of
               the LOG-probability (the original's -CrossEntropy(logits, argmax))   (1 forward + backward)
3. "-high": rows = ceil(H/1024), cols = floor(rows * W / H) equal tiles of ceil(W/cols) x ceil(H/rows) px
   (PIL crop, black beyond the border); the per-tile maps are stitched side by side, never renormalised.
   The original divides by zero when floor(rows * W / H) = 0 (any image taller than wide enough, e.g. every
   portrait image under 1024 px); we use one column there.
4. Crop selection on the stitched TOKEN grid (no upsampling, no smoothing): each grid cell is W/C x H/R image
   px; square windows of int(336 r / cell) cells for r in 1, 1.2, ..., 2, slid with a stride of one cell;
   for each r the window of largest sum, scored (sum - mean of its <= 4 one-cell-shifted neighbours) / cells;
   the r of the best score wins; the crop is a 336 r px square centred on that window, shifted inside the
   image. An image no larger than the r = 1 window is returned whole.
5. The answer: ONE prompt with two images, [full image, crop].

Attention weights exist only with the eager attention implementation: `ViCrop` REFUSES to run on a model
loaded with sdpa / flash attention (`AttentionImplementationError`) -- the incompatibility FOCUS removes.
`load_mllm(..., attn_implementation="eager")` or `ensure_eager(mllm)` give a usable model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from focuslib.core.targets import strip_options
from focuslib.core.trace import BaselineTrace, begin_answer
from focuslib.eval.baselines.common import build_preset
from focuslib.images import crop
from focuslib.models.base import calls_since, TokenLayout


MAP_SUFFIX = "Answer the question using a single word or phrase."  # appended to every map prompt (run.py:52-54)
GENERIC_QUESTION = "Write a general description of the image."    # rel-att's normaliser (run.py:48)
GENERIC_PROMPT = f"{GENERIC_QUESTION} {MAP_SUFFIX}"                # the text of the generic map's user turn
FP_PURPOSE = "vicrop_attention"       # one per map forward
FULL_PURPOSE = "vicrop_full_answer"   # the original's extra greedy answer on the full image (counted as 1 FP)


class AttentionImplementationError(RuntimeError):
    """The model does not expose attention weights (sdpa / flash attention)."""


def attn_implementation(model) -> str | None:
    """The attention implementation of the LANGUAGE model (where ViCrop reads its maps)."""
    cfg = model.config
    text = getattr(cfg, "text_config", None)
    impl = getattr(text, "_attn_implementation", None) if text is not None else None
    return impl or getattr(cfg, "_attn_implementation", None)


def require_eager(mllm) -> None:
    impl = attn_implementation(mllm.model)
    if impl != "eager":
        raise AttentionImplementationError(
            f"ViCrop needs attention weights, but the model uses attn_implementation={impl!r}, which does not "
            "return them. Load it with load_mllm(..., attn_implementation='eager') or call "
            "focuslib.eval.baselines.vicrop.ensure_eager(mllm) first (slower, more memory: the reason FOCUS avoids it).")


def ensure_eager(mllm):
    """Switch `mllm`'s model to eager attention in place (returns `mllm`)."""
    model = mllm.model
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # older transformers
        for cfg in (model.config, getattr(model.config, "text_config", None)):
            if cfg is not None:
                cfg._attn_implementation = "eager"
    return mllm


@dataclass(frozen=True)
class ViCropConfig:
    variant: str = "rel"                 # rel | grad
    high: bool = True                    # tile high-resolution images (the paper's "-high" variants)
    layer: int = 14                      # 0-based decoder layer (llava_methods.py:14) of a model with ref_layers ...
    ref_layers: int = 32                 # ... layers, scaled to other depths
    tile: int = 1024                     # "-high" row height threshold (utils.py:125, res_threshold)
    base_side: int = 336                 # bbox_size: the encoder's input side (run.py:41)
    window_ratios: tuple[float, ...] = (1, 1.2, 1.4, 1.6, 1.8, 2)  # crop sides / base_side (utils.py:58)
    map_suffix: str = MAP_SUFFIX
    generic_question: str = GENERIC_QUESTION
    full_image_answer: bool = True       # run the original's extra full-image answer (1 FP, run.py:57-59)
    max_new_tokens: int = 16

    def resolved_layer(self, num_layers: int) -> int:
        l = self.layer if num_layers == self.ref_layers else int(round(self.layer * num_layers / self.ref_layers))
        return max(0, min(l, num_layers - 1))


VICROP_PRESETS: dict[str, dict] = {
    "llava-1.5": dict(layer=14, ref_layers=32, base_side=336),
    # not evaluated with ViCrop in the paper: the same fraction of depth, each encoder's base side
    "llava-onevision": dict(layer=14, ref_layers=32, base_side=384),
    "qwen2.5-vl": dict(layer=14, ref_layers=32, base_side=448),
}


def vicrop_preset(family: str, **overrides) -> ViCropConfig:
    cfg = build_preset(ViCropConfig, VICROP_PRESETS, family, "ViCrop", overrides)
    if cfg.variant not in ("rel", "grad"):
        raise ValueError(f"ViCrop variant must be 'rel' or 'grad', not {cfg.variant!r}")
    return cfg


# ---- "-high" tiling ------------------------------------------------------------------------------
def split_grid(size: tuple[int, int], tile: int) -> tuple[int, int]:
    """(rows, cols) of the "-high" split: rows = ceil(H/tile), cols = floor(rows*W/H) (utils.py:143-144).
    The original has no lower bound on cols and divides by zero when it is 0 (tall images); ours: >= 1."""
    W, H = size
    rows = max(1, math.ceil(H / tile))
    cols = int(rows * W / H)
    return rows, max(1, cols)


def tiles(size: tuple[int, int], tile: int) -> list[tuple[int, int, int, int]]:
    """Row-major boxes of the equal "-high" tiles, each ceil(W/cols) x ceil(H/rows) px (utils.py:147-152): the
    last row / column may reach past the image (those pixels are black in the tile, as PIL's crop gives)."""
    W, H = size
    rows, cols = split_grid(size, tile)
    tw, th = math.ceil(W / cols), math.ceil(H / rows)
    return [(i * tw, j * th, (i + 1) * tw, (j + 1) * th) for j in range(rows) for i in range(cols)]


def regrid(vals: torch.Tensor, cell_boxes: torch.Tensor, size: tuple[int, int],
           shape: tuple[int, int]) -> torch.Tensor:
    """A token map `[h, w]` whose cells cover `cell_boxes` `[h, w, 4]` (px of an image of `size`) as the regular
    `shape` grid over the whole image, float64. Unchanged when the cells already are that grid (LLaVA-1.5 on a
    square image); otherwise each cell's value is spread over its box (mass preserved) and summed per grid cell
    (LLaVA-1.5 pads a non-square image to a square, so its cells are not the image's W/24 x H/24 blocks)."""
    W, H = size
    gh, gw = shape
    xe = torch.linspace(0, W, gw + 1, dtype=torch.float64)
    ye = torch.linspace(0, H, gh + 1, dtype=torch.float64)
    b = cell_boxes.to(torch.float64).reshape(-1, 4)
    v = vals.to(torch.float64).flatten()
    if tuple(vals.shape) == (gh, gw):
        reg = torch.stack(torch.broadcast_tensors(xe[None, :-1], ye[:-1, None], xe[None, 1:], ye[1:, None]), -1)
        if torch.allclose(b, reg.reshape(-1, 4), atol=1e-2, rtol=0):
            return vals.to(torch.float64).clone()
    fx = (torch.minimum(b[:, 2:3], xe[None, 1:]) - torch.maximum(b[:, 0:1], xe[None, :-1])).clamp(min=0)  # [n, gw]
    fy = (torch.minimum(b[:, 3:4], ye[None, 1:]) - torch.maximum(b[:, 1:2], ye[None, :-1])).clamp(min=0)  # [n, gh]
    area = fx.sum(1) * fy.sum(1)
    w = torch.where(area > 0, v / area.clamp(min=1e-12), torch.zeros_like(v))
    return torch.einsum("n,ni,nj->ij", w, fy, fx)


# ---- crop selection (utils.py:37-123, bbox_from_att_image_adaptive) ---------------------------------
def select_box(att: np.ndarray | torch.Tensor, image_size: tuple[int, int], bbox_size: int,
               ratios: tuple[float, ...] = (1, 1.2, 1.4, 1.6, 1.8, 2)) -> tuple[tuple[int, int, int, int], dict]:
    """The original's adaptive window on a map `[R, C]` whose cell (r, c) is the image block of W/C x H/R px.

    For each ratio r: a window of (int(bbox_size*r / (W/C)), int(bbox_size*r / (H/R))) cells (capped by the
    map), slid with a one-cell stride; its position = the first maximum in x-major order (the original's
    loops); its score = (max - mean of the window sums one cell left/right/up/down, where they exist) / cells.
    A window covering the whole map is skipped (at r = 1: the whole image is returned). The best-scoring r
    gives a bbox_size*r px square centred on the window, shifted inside the image.
    Returns ((x0, y0, x1, y1) px, {"ratio", "score", "window": (x, y, nx, ny) cells}).
    """
    a = np.asarray(att.detach().cpu() if torch.is_tensor(att) else att, dtype=np.float64)
    R, C = a.shape
    W, H = image_size
    bw, bh = W / C, H / R
    found = []  # (score, (x, y), (nx, ny), ratio)
    for ratio in ratios:
        nx, ny = min(int(bbox_size * ratio / bw), C), min(int(bbox_size * ratio / bh), R)
        if C - nx < 1 and R - ny < 1:
            if not found:  # the r = 1 window already holds the whole map (the original returns at ratio == 1)
                return (0, 0, W, H), {"ratio": float(ratio), "score": 0.0, "window": (0, 0, C, R)}
            continue
        nx, ny = max(nx, 1), max(ny, 1)  # guard: a window below one cell cannot happen at the original's sizes
        sums = np.lib.stride_tricks.sliding_window_view(a, (ny, nx)).sum(axis=(-2, -1))  # [R-ny+1, C-nx+1]
        k = int(np.argmax(sums.T))  # x-major: first maximum in the original's (x outer, y inner) loop order
        x, y = divmod(k, sums.shape[0])
        best = sums[y, x]
        adj = [sums[yy, xx] for yy, xx in ((y, x - 1), (y, x + 1), (y - 1, x), (y + 1, x))
               if 0 <= yy < sums.shape[0] and 0 <= xx < sums.shape[1]]
        found.append(((best - float(np.mean(adj))) / (nx * ny), (x, y), (nx, ny), ratio))
    score, (x, y), (nx, ny), ratio = found[int(np.argmax([f[0] for f in found]))]
    side = bbox_size * ratio
    half = side // 2  # float floor division, as the original (a 403.2 px side gives a 402 px box)
    xc, yc = int(x * bw + bw * nx / 2), int(y * bh + bh * ny / 2)
    xc, yc = max(xc, half), max(yc, half)
    xc, yc = min(xc, W - half), min(yc, H - half)
    box = (max(0, xc - half), max(0, yc - half), min(W, xc + half), min(H, yc + half))
    return tuple(int(round(v)) for v in box), {"ratio": float(ratio), "score": float(score),
                                               "window": (x, y, nx, ny)}


class ViCrop:
    """`ViCrop(mllm, config).answer(image, question)` -> BaselineTrace. Needs an eager-attention model."""

    def __init__(self, mllm, config: ViCropConfig | None = None):
        require_eager(mllm)
        self.mllm = mllm
        self.config = config or vicrop_preset(getattr(mllm, "family", ""))
        self.method = f"vicrop-{self.config.variant}" + ("-high" if self.config.high else "")

    # ---- one map on one image ---------------------------------------------------------------
    def token_map(self, image: Image.Image, text: str, grad: bool = False) -> tuple[torch.Tensor, TokenLayout]:
        """`[h, w]` attention of the last prompt token to the image tokens at the chosen layer (heads averaged),
        times ReLU of the gradient of the greedy token's log-probability when `grad`; and the token layout
        (cell boxes in `image`'s pixels). `text` is the whole user turn (question + suffix)."""
        m = self.mllm
        require_eager(m)
        inputs = m.build_inputs([[image]], [m.prompt(text, 1)])
        layout = m.layout(image, inputs)
        layer = m.decoder_layers[self.config.resolved_layer(m.num_layers)].self_attn
        captured = {}
        hook = layer.register_forward_hook(lambda mod, args, out: captured.__setitem__("w", out[1]))
        try:
            with torch.set_grad_enabled(grad):
                out = m.model(**m._to_device(inputs), use_cache=False, logits_to_keep=1)
                w = captured.get("w")
                if w is None:
                    raise AttentionImplementationError("the attention layer returned no weights (not eager?)")
                if grad:
                    # -CrossEntropy(logits, argmax) of llava_methods.py:41-44 = log_softmax(logits)[argmax]
                    logp = torch.log_softmax(out.logits[0, -1].float(), -1)
                    y = logp[int(logp.argmax())]
                    if not w.requires_grad:
                        raise RuntimeError("grad-att needs gradients: the model's parameters do not require grad")
                    (g,) = torch.autograd.grad(y, w)
                    att = w.detach() * g.relu()
                else:
                    att = w
        finally:
            hook.remove()
        m.calls[FP_PURPOSE] += 1
        row = att[0, :, -1, :].float().mean(0).detach().cpu()
        vals = row[layout.positions.flatten()].view(layout.shape)
        return vals * layout.valid, layout

    def map_prompt(self, question: str) -> str:
        return f"{question} {self.config.map_suffix}"

    def image_map(self, image: Image.Image, question: str) -> tuple[torch.Tensor, TokenLayout]:
        """rel-att: A(question) / A(generic) cell by cell (llava_methods.py:89; a zero denominator gives 0);
        grad-att: the gradient-weighted map."""
        if self.config.variant == "grad":
            return self.token_map(image, self.map_prompt(question), grad=True)
        q, lay = self.token_map(image, self.map_prompt(question))
        g, _ = self.token_map(image, self.map_prompt(self.config.generic_question))
        ratio = torch.where(g > 0, q / torch.where(g > 0, g, torch.ones_like(g)), torch.zeros_like(q))
        return ratio * lay.valid, lay

    def relevance(self, image: Image.Image, question: str) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
        """The stitched map `[rows*h, cols*w]` float64 (one regular h x w block per tile, `np.block` order of
        utils.py:183) and the tile boxes; without `high`, the one map of the whole image."""
        cfg = self.config
        boxes = tiles(image.size, cfg.tile) if cfg.high else [(0, 0, image.width, image.height)]
        rows = len({b[1] for b in boxes})
        blocks, shape = [], None
        for b in boxes:
            sub = image if b == (0, 0, image.width, image.height) else image.crop(b)  # PIL: black past the edge
            vals, lay = self.image_map(sub, question)
            shape = shape or lay.shape  # every tile has the same size, hence (for our adapters) the same grid
            blocks.append(regrid(vals, lay.cell_boxes, sub.size, shape))
        cols = len(boxes) // rows
        grid = torch.cat([torch.cat(blocks[j * cols:(j + 1) * cols], 1) for j in range(rows)], 0)
        return grid, boxes

    def select(self, grid: torch.Tensor, size: tuple[int, int]) -> tuple[tuple[int, int, int, int], dict]:
        return select_box(grid, size, self.config.base_side, self.config.window_ratios)

    # ---- all together ------------------------------------------------------------------------
    def answer(self, image, question: str, targets: list[str] | None = None,
               answer_prompt: str | None = None) -> BaselineTrace:
        m, cfg = self.mllm, self.config
        image, before, clock = begin_answer(m, image, question)
        bare = strip_options(question) or question  # the original's short_question (V*: the first line)
        text = answer_prompt or question
        extra = {"config": asdict(cfg)}
        with clock("total"):
            if cfg.full_image_answer:
                with clock("full_image_answer"):
                    extra["full_image_answer"] = m.generate([image], text, max_new_tokens=cfg.max_new_tokens,
                                                            purpose=FULL_PURPOSE)
            with clock("maps"):
                grid, tile_boxes = self.relevance(image, bare)
            with clock("select"):
                box, info = self.select(grid, image.size)
            images = [image, crop(image, box)]
            with clock("answer"):
                ans = m.generate(images, text, max_new_tokens=cfg.max_new_tokens)
        calls = calls_since(m, before)
        extra.update(tiles=[list(b) for b in tile_boxes], grid_shape=list(grid.shape), window=info)
        return BaselineTrace(
            method=self.method, question=question, targets=[], qtype=1, target_source="none",
            per_target=[{"target": bare, "rois": [{"box": list(box), "confidence": info["score"]}], "verified": [0],
                         "best": 0, "selected": [0]}],
            chosen_boxes=[tuple(box)], final_mode="image+crop", final_size=images[1].size, answer=ans,
            search_fp=calls.get(FP_PURPOSE, 0) + calls.get(FULL_PURPOSE, 0), model_calls=calls,
            timings=dict(clock.t), extra=extra, final_images=images)


__all__ = ["ViCrop", "ViCropConfig", "VICROP_PRESETS", "vicrop_preset", "AttentionImplementationError",
           "attn_implementation", "require_eager", "ensure_eager", "split_grid", "tiles", "regrid", "select_box",
           "GENERIC_PROMPT", "GENERIC_QUESTION", "MAP_SUFFIX"]
