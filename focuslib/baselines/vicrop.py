"""ViCrop ("MLLMs know where to look", Zhang et al., ICLR 2025) re-implemented from its paper's description.

One map over the image tokens per forward pass, read at ONE decoder layer (14 of LLaVA-1.5's 32; the
same fraction of depth for other models), row of the LAST prompt token, averaged over heads:

  rel-att   A(question) / A(generic description prompt)          (2 forwards per image / tile)
  grad-att  mean over heads of A * ReLU(dy/dA), y = the logit of the model's greedy next token at the
            last position                                        (1 forward + backward per image / tile)

Attention weights exist only with the eager attention implementation: `ViCrop` REFUSES to run on a model
loaded with sdpa / flash attention (`AttentionImplementationError`) -- the incompatibility FOCUS removes.
`load_mllm(..., attn_implementation="eager")` or `ensure_eager(mllm)` give a usable model.

"-high" (the paper's variants rel-att-high / grad-att-high, A.4): the image is cut into a grid of
ceil(W/1024) x ceil(H/1024) equal tiles, each tile gets its own map, the maps are stitched in image
coordinates (no per-tile renormalisation). Crop: square sliding windows of 1, 1.5 and 2 x the encoder's base
side (capped by the image), stride 1/8 window; the window with the largest mass in excess of a uniform
map's (mass - area fraction) wins. Answer: the full image AND the crop as two images, also for
single-image models (decisions.md D22). search_fp = attention forwards (A.2).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from ..images import FocusInputError, crop, load_image
from ..models.base import TokenLayout, calls_since
from ..search import _Clock
from ..targets import strip_options
from .common import BaselineTrace, build_preset

GENERIC_PROMPT = "Give a short overall description of this picture."
FP_PURPOSE = "vicrop_attention"


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
            "focuslib.baselines.vicrop.ensure_eager(mllm) first (slower, more memory: the reason FOCUS avoids it).")


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
    layer: int = 14                      # 0-based decoder layer of a model with ref_layers layers ...
    ref_layers: int = 32                 # ... scaled to other depths
    tile: int = 1024                     # "-high" tile side (px)
    base_side: int = 336                 # encoder base resolution: window sides are multiples of it
    window_scales: tuple[float, ...] = (1.0, 1.5, 2.0)
    stride_frac: float = 0.125
    raster: int = 512                    # longest side of the stitched map's raster
    eps: float = 1e-6
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


def tiles(size: tuple[int, int], tile: int) -> list[tuple[int, int, int, int]]:
    """Equal grid of ceil(W/tile) x ceil(H/tile) boxes covering the image, row-major."""
    W, H = size
    nx, ny = max(1, math.ceil(W / tile)), max(1, math.ceil(H / tile))
    xs = [round(i * W / nx) for i in range(nx + 1)]
    ys = [round(j * H / ny) for j in range(ny + 1)]
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(ny) for i in range(nx)]


def rasterize(size: tuple[int, int], pieces: list[tuple[torch.Tensor, torch.Tensor]], raster: int):
    """Stitch cell maps into one density raster of the image. pieces: (values [h, w], cell boxes [h, w, 4]
    in image px). Each cell's value is spread uniformly over its box (mass preserved). Returns (raster, scale)."""
    W, H = size
    s = min(1.0, raster / max(W, H))
    Ws, Hs = max(1, round(W * s)), max(1, round(H * s))
    out = torch.zeros(Hs, Ws, dtype=torch.float64)
    for vals, boxes in pieces:
        for v, b in zip(vals.flatten().tolist(), boxes.view(-1, 4).tolist()):
            if v == 0 or b[2] <= b[0] or b[3] <= b[1]:
                continue
            x0, x1 = min(int(b[0] * s), Ws - 1), max(min(math.ceil(b[2] * s), Ws), 1)
            y0, y1 = min(int(b[1] * s), Hs - 1), max(min(math.ceil(b[3] * s), Hs), 1)
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
            out[y0:y1, x0:x1] += v / ((x1 - x0) * (y1 - y0))
    return out, s


def best_window(density: torch.Tensor, scale: float, size: tuple[int, int], sides: list[int],
                stride_frac: float) -> tuple[tuple[int, int, int, int], float]:
    """Sliding square windows of each side (px); the window of largest excess mass. Returns (box px, score)."""
    W, H = size
    Hs, Ws = density.shape
    total = float(density.sum())
    if total <= 0:
        density = torch.ones_like(density)
        total = float(density.sum())
    d = density / total
    ii = torch.zeros(Hs + 1, Ws + 1, dtype=torch.float64)
    ii[1:, 1:] = d.cumsum(0).cumsum(1)
    best, best_score = (0, 0, W, H), -math.inf
    for side in sides:
        ww = max(1, min(Ws, round(min(side, W) * scale)))
        wh = max(1, min(Hs, round(min(side, H) * scale)))
        step = max(1, int(min(ww, wh) * stride_frac))
        ys = list(range(0, Hs - wh + 1, step))
        xs = list(range(0, Ws - ww + 1, step))
        ys += [Hs - wh] if ys[-1] != Hs - wh else []
        xs += [Ws - ww] if xs[-1] != Ws - ww else []
        y = torch.tensor(ys)[:, None]
        x = torch.tensor(xs)[None, :]
        mass = ii[y + wh, x + ww] - ii[y, x + ww] - ii[y + wh, x] + ii[y, x]
        score = mass - (ww * wh) / (Ws * Hs)
        k = int(torch.argmax(score))
        sc = float(score.flatten()[k])
        if sc > best_score + 1e-12:
            r, c = divmod(k, len(xs))
            x0, y0 = xs[c] / scale, ys[r] / scale
            box = (int(round(x0)), int(round(y0)), int(round(min(W, x0 + ww / scale))), int(round(min(H, y0 + wh / scale))))
            best, best_score = box, sc
    return best, best_score


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
        times ReLU of its gradient when `grad`; and the token layout (cell boxes in `image`'s pixels)."""
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
                    y = out.logits[0, -1].max()
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

    def image_map(self, image: Image.Image, question: str) -> tuple[torch.Tensor, TokenLayout]:
        if self.config.variant == "grad":
            return self.token_map(image, question, grad=True)
        q, lay = self.token_map(image, question)
        g, _ = self.token_map(image, GENERIC_PROMPT)
        return (q / (g + self.config.eps)) * lay.valid, lay

    def relevance(self, image: Image.Image, question: str) -> tuple[torch.Tensor, float, list]:
        """Stitched density raster over the whole image (tiles when `high`), its scale and the tile boxes."""
        cfg = self.config
        boxes = tiles(image.size, cfg.tile) if cfg.high else [(0, 0, image.width, image.height)]
        pieces = []
        for b in boxes:
            sub = image if b == (0, 0, image.width, image.height) else crop(image, b)
            vals, lay = self.image_map(sub, question)
            cb = lay.cell_boxes.clone()
            cb[..., 0::2] += b[0]
            cb[..., 1::2] += b[1]
            pieces.append((vals, cb))
        density, s = rasterize(image.size, pieces, cfg.raster)
        return density, s, boxes

    def select(self, density: torch.Tensor, scale: float, size) -> tuple[tuple[int, int, int, int], float]:
        cfg = self.config
        sides = [int(round(k * cfg.base_side)) for k in cfg.window_scales]
        return best_window(density, scale, size, sides, cfg.stride_frac)

    # ---- all together ------------------------------------------------------------------------
    def answer(self, image, question: str, targets: list[str] | None = None,
               answer_prompt: str | None = None) -> BaselineTrace:
        if not isinstance(question, str) or not question.strip():
            raise FocusInputError("the question is empty")
        image = load_image(image)
        m, cfg = self.mllm, self.config
        before = Counter(m.calls)
        clock = _Clock(getattr(m, "device", "cpu"))
        bare = strip_options(question) or question
        with clock("total"):
            with clock("maps"):
                density, s, tile_boxes = self.relevance(image, bare)
            with clock("select"):
                box, score = self.select(density, s, image.size)
            images = [image, crop(image, box)]
            with clock("answer"):
                ans = m.generate(images, answer_prompt or question, max_new_tokens=cfg.max_new_tokens)
        calls = calls_since(m, before)
        return BaselineTrace(
            method=self.method, question=question, targets=[], qtype=1, target_source="none",
            per_target=[{"target": bare, "rois": [{"box": list(box), "confidence": score}], "verified": [0],
                         "best": 0, "selected": [0]}],
            chosen_boxes=[tuple(box)], final_mode="image+crop", final_size=images[1].size, answer=ans,
            search_fp=calls.get(FP_PURPOSE, 0), model_calls=calls, timings=dict(clock.t),
            extra={"config": asdict(cfg), "tiles": [list(b) for b in tile_boxes]}, final_images=images)


__all__ = ["ViCrop", "ViCropConfig", "VICROP_PRESETS", "vicrop_preset", "AttentionImplementationError",
           "attn_implementation", "require_eager", "ensure_eager", "tiles", "rasterize", "best_window",
           "GENERIC_PROMPT"]
