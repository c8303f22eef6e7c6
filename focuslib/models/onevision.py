"""LLaVA-OneVision adapter (`llava-hf/llava-onevision-qwen2-7b-ov-hf`) on LlavaOnevisionForConditionalGeneration.

Token layout of one image (transformers' processor + `pack_image_features`, checked against 5.23):

  [base view: whole image resized to 384 x 384 -> 27 x 27 = 729 tokens, row-major]
  [local tokens: the anyres tiles as ONE canvas of (rows*27) x (cols*27) patches, unpadded back to the
   image's aspect (`unpad_image`), bilinearly shrunk if it exceeds anyres_max_9 by > 1.1, and an
   `image_newline` token appended to every row]  ->  729 + h_f * (w_f + 1) tokens

The relevance grid is the h_f x w_f local grid (paper eq. 4: local tokens only; base view and newline
tokens excluded). Each cell maps back to the ORIGINAL image through: canvas patch -> canvas pixel (tile t,
patch j covers [384 t + 14 j, 384 t + 14 (j+1)); SigLIP's 27 patches cover 378 of the 384 px, the last
patch of a tile is given the 6 uncovered px) -> the aspect-kept resize to the best pinpoint and its
centred padding (`get_patch_output_size`, `_get_padding_size`) -> original pixels. A downsized grid's
cell covers its share of the unpadded canvas (bilinear, align_corners=False, mixes neighbours).

Several images in ONE prompt (the final interleaved answer), `interleave` (default `config.INPUTS`):
  "anyres" (default, the paper's): every image gets its own anyres tiling (729 + h_f * (w_f + 1) tokens),
      as transformers 4.46 (the paper's version, A.1) processed a multi-image OV prompt. In 5.23 the
      image processor and `get_image_features` tile an image only if its prompt holds exactly one
      (`need_patching = [n == 1 for n in batch_num_images ...]`), so the images go FLAT to the
      processor: `batch_num_images = [1, 1, ...]`, each tiled, consumed in placeholder order.
  "native": a nested list = OV's multi-image mode since transformers PR 38084: each image padded to
      square and encoded as ONE 384 view (729 + 1 newline tokens, no tiles).
Token counts of both on HR-8K-sized inputs: benchmarks/results_ov_tokens.md (decisions.md D10).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from PIL import Image

from focuslib.core.config import INPUTS, SYSTEM_LINES
from focuslib.models.base import chatml_prompt, MLLM, TokenLayout
from focuslib.models.registry import register_family


@functools.lru_cache(maxsize=None)
def processor_class():
    """LlavaOnevisionProcessor without the video processor (FOCUS uses none; without torchvision
    transformers 5.23 cannot even construct the stock processor because of it)."""
    from transformers import LlavaOnevisionProcessor

    class FocusLlavaOnevisionProcessor(LlavaOnevisionProcessor):
        # explicit parameters: ProcessorMixin saves exactly the __init__ parameters
        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                     video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                             vision_feature_select_strategy=vision_feature_select_strategy,
                             chat_template=chat_template, image_token=image_token, video_token=video_token,
                             vision_aspect_ratio=vision_aspect_ratio, **kwargs)

    return FocusLlavaOnevisionProcessor


def best_resolution(size_hw, pinpoints) -> tuple[int, int]:
    from transformers.image_processing_utils import select_best_resolution
    return tuple(select_best_resolution(tuple(size_hw), [list(p) for p in pinpoints]))


def patch_output_size(size_hw, target_hw) -> tuple[int, int]:
    """transformers.image_processing_utils.get_patch_output_size, on sizes."""
    (h, w), (th, tw) = size_hw, target_hw
    sw, sh = tw / w, th / h
    if sw < sh:
        return min(math.ceil(h * sw), th), tw
    return th, min(math.ceil(w * sh), tw)


@register_family("llava-onevision", model_type="llava_onevision",
                 model_class="LlavaOnevisionForConditionalGeneration", alias="llava-ov-7b",
                 hub_id="llava-hf/llava-onevision-qwen2-7b-ov-hf", paper_name="LLaVA-OV-7B")
class OneVisionAdapter(MLLM):
    multi_image = True
    answer_prefix = ""   # the answer starts right after "<|im_start|>assistant\n"

    def __init__(self, model, processor, name: str = "", vision_aspect_ratio: str | None = None,
                 image_grid_pinpoints=None, interleave: str | None = None, system: str | None = None):
        """vision_aspect_ratio: "anyres_max_N" (default: the checkpoint's, anyres_max_9 for OV-7B);
        image_grid_pinpoints: list of (h, w) tile canvases (default: the checkpoint's). Both are written
        into the model config AND the processor so token counts and features stay consistent.
        interleave: several images in one prompt: "anyres" (each tiled as if alone, the paper's
        transformers 4.46 behaviour; default, config.INPUTS) or "native" (OV's multi-image mode, 730 each).
        system: the chat format's system line (default config.SYSTEM_LINES, "" = none)."""
        super().__init__(model, processor, name)
        self.system = SYSTEM_LINES[self.family] if system is None else system
        cfg = model.config
        if vision_aspect_ratio is not None:
            if not vision_aspect_ratio.startswith("anyres_max_"):
                raise ValueError(f"vision_aspect_ratio must look like 'anyres_max_9', got {vision_aspect_ratio!r}")
            cfg.vision_aspect_ratio = vision_aspect_ratio
        if image_grid_pinpoints is not None:
            cfg.image_grid_pinpoints = [list(p) for p in image_grid_pinpoints]
        processor.vision_aspect_ratio = cfg.vision_aspect_ratio
        processor.image_processor.image_grid_pinpoints = [list(p) for p in cfg.image_grid_pinpoints]
        interleave = INPUTS[self.family]["interleave"] if interleave is None else interleave
        if interleave not in ("native", "anyres"):
            raise ValueError("interleave must be 'native' or 'anyres'")
        self.interleave = interleave
        self.tile = int(cfg.vision_config.image_size)                    # 384
        self.patch = int(cfg.vision_config.patch_size)                   # 14
        self.g = self.tile // self.patch                                 # 27
        self.max_tiles = int(cfg.vision_aspect_ratio[len("anyres_max_"):])
        self.pinpoints = [tuple(p) for p in cfg.image_grid_pinpoints]
        self.image_token_id = cfg.image_token_id
        self.extra = 1 if cfg.vision_feature_select_strategy == "default" else 0  # tokens dropped per view

    @classmethod
    def load_processor(cls, name: str, **kw):
        return processor_class().from_pretrained(name, **kw)

    def prompt(self, text: str | Sequence[str], n_images: int) -> str:
        """LLaVA's qwen_1_5 conversation (lmms-eval / ZoomEye): system turn, images first, then "\n" + text,
        ending where the answer starts (decisions.md D32). text = [caption per image..., question]: each
        image is followed by "\n" + its caption + "\n" (ZoomEye's multi-image prompt, decisions.md D10)."""
        return chatml_prompt(self.system, "<image>", "\n", text, n_images)

    @property
    def decoder_layers(self):
        return list(self.model.model.language_model.layers)

    def build_inputs(self, images, texts, offsets: bool = False):
        kw = dict(return_offsets_mapping=True) if offsets else {}
        n = [len(ims) for ims in images]
        if not any(n):
            imgs = None
        elif any(k == 0 for k in n):
            raise ValueError("every prompt of a batch needs at least one image")
        elif self.interleave == "anyres":
            imgs = [im for ims in images for im in ims]   # flat: batch_num_images = [1, 1, ...] -> all tiled
        else:
            imgs = [list(ims) for ims in images]   # nested: one image -> anyres, several -> multi-image
        return self.processor(images=imgs, text=texts, return_tensors="pt", padding=True, **kw)

    # ---- layout ----------------------------------------------------------------------
    def local_grid(self, image_size: tuple[int, int]):
        """For an image of (W, H): (fh, fw) of the local grid and `[fh+1]`, `[fw+1]` cell edges in
        original pixels (y edges, x edges), plus the (rows, cols) tiles and unpadded shape."""
        W, H = image_size
        g, tile, patch = self.g, self.tile, self.patch
        bh, bw = best_resolution((H, W), self.pinpoints)
        rows, cols = bh // tile, bw // tile
        ch, cw = rows * g, cols * g
        # unpad_image on the (ch, cw) feature canvas
        r0, r1, c0, c1 = 0, ch, 0, cw
        if W / H > cw / ch:
            new_h = int(round(H * (cw / W), 7))
            pad = (ch - new_h) // 2
            r0, r1 = pad, ch - pad
        else:
            new_w = int(round(W * (ch / H), 7))
            pad = (cw - new_w) // 2
            c0, c1 = pad, cw - pad
        uh, uw = r1 - r0, c1 - c0
        ratio = math.sqrt(uh * uw / (self.max_tiles * g ** 2))
        fh, fw = (int(uh // ratio), int(uw // ratio)) if ratio > 1.1 else (uh, uw)
        # resized image inside the padded best-resolution canvas
        nh, nw = patch_output_size((H, W), (bh, bw))
        py, px = (bh - nh) // 2, (bw - nw) // 2

        def canvas_px(e: torch.Tensor) -> torch.Tensor:   # feature edge (may be fractional) -> canvas px
            lo = e.floor()
            t, j = torch.div(lo, g, rounding_mode="floor"), lo % g
            a = t * tile + j * patch
            nxt = lo + 1
            b = torch.div(nxt, g, rounding_mode="floor") * tile + (nxt % g) * patch
            return a + (e - lo) * (b - a)

        ys = canvas_px(r0 + torch.arange(fh + 1, dtype=torch.float64) * (uh / fh))
        xs = canvas_px(c0 + torch.arange(fw + 1, dtype=torch.float64) * (uw / fw))
        ys = ((ys - py) * H / nh).clamp(0, H)
        xs = ((xs - px) * W / nw).clamp(0, W)
        return (fh, fw), ys, xs, dict(tiles=(rows, cols), unpadded=(uh, uw), downsized=ratio > 1.1)

    def final_input_tokens(self, sizes: list[tuple[int, int]]) -> int:
        """Image tokens of one prompt holding images of `sizes` (W, H) under this adapter's `interleave`."""
        multi = len(sizes) > 1 and self.interleave == "native"
        return sum(self.num_image_tokens(sz, multi=multi) for sz in sizes)

    def num_image_tokens(self, image_size: tuple[int, int], multi: bool = False) -> int:
        """Tokens of one image: alone / anyres-interleaved, or as OV's native multi-image view
        (`multi=True`: one 384 view + newline)."""
        base = self.g * self.g - self.extra
        if multi:
            return base + 1
        (fh, fw), *_ = self.local_grid(image_size)
        return base + fh * (fw + 1)

    def layout(self, image: Image.Image, inputs, index: int = 0) -> TokenLayout:
        ids = inputs["input_ids"][index]
        pos = torch.nonzero(ids == self.image_token_id).flatten()
        (fh, fw), ys, xs, _ = self.local_grid(image.size)
        base = self.g * self.g - self.extra
        if pos.numel() != base + fh * (fw + 1):
            raise RuntimeError(f"expected {base + fh * (fw + 1)} image tokens for one {image.size} image, "
                               f"found {pos.numel()}")
        local = pos[base:].view(fh, fw + 1)[:, :fw]           # drop the newline token of every row
        boxes = torch.stack(torch.broadcast_tensors(xs[None, :-1], ys[:-1, None], xs[None, 1:], ys[1:, None]), -1)
        return TokenLayout(positions=local.contiguous().cpu(), cell_boxes=boxes.float(), image_size=image.size)

    # ---- batched verification -----------------------------------------------------------
    def _forward_batch(self, inputs, **kw):
        """Left-padded batch forward with position ids counted from each sequence's first real token,
        so a padded sequence sees exactly the positions it has alone."""
        mask = inputs["attention_mask"]
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.model(**inputs, position_ids=pos.to(mask.device), **kw)
