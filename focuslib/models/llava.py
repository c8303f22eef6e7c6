"""LLaVA-1.5 adapter (`llava-hf/llava-1.5-7b-hf`) on transformers' LlavaForConditionalGeneration.

Token layout: `<image>` expands to a row-major g x g grid (g = 336 / 14 = 24) of the processed
image. HF's processor resizes + centre-crops, which would hide the sides of a wide image, so we
pad to square with the mean colour first, as original LLaVA-1.5 does; the crop is then a no-op
and each cell maps back through the padding to a box of the original image.
"""
from __future__ import annotations

import torch
from PIL import Image

from ..images import pad_to_square
from .base import MLLM, TokenLayout


class LlavaAdapter(MLLM):
    family = "llava-1.5"
    multi_image = False

    def __init__(self, model, processor, name: str = ""):
        super().__init__(model, processor, name)
        ip = processor.image_processor
        self.fill = tuple(int(round(x * 255)) for x in ip.image_mean)
        crop = getattr(ip, "crop_size", None) or {}
        size = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
        self.input_side = int(size or model.config.vision_config.image_size)
        self.grid = self.input_side // model.config.vision_config.patch_size
        self.image_token_id = model.config.image_token_id

    def prompt(self, text: str, n_images: int) -> str:
        # the llava-hf model card's format for llava-1.5
        return "USER: " + "<image>\n" * n_images + text + " ASSISTANT:"

    @property
    def decoder_layers(self):
        return list(self.model.model.language_model.layers)

    def build_inputs(self, images, texts, offsets: bool = False):
        flat = [pad_to_square(im, self.fill)[0] for ims in images for im in ims]
        kw = dict(return_offsets_mapping=True) if offsets else {}
        return self.processor(images=flat or None, text=texts, return_tensors="pt", padding=True, **kw)

    def layout(self, image: Image.Image, inputs, index: int = 0) -> TokenLayout:
        ids = inputs["input_ids"][index]
        pos = torch.nonzero(ids == self.image_token_id).flatten()
        g = self.grid
        if pos.numel() != g * g:
            raise RuntimeError(f"expected {g * g} image tokens, found {pos.numel()}")
        W, H = image.size
        side = max(W, H)
        ox, oy = (side - W) // 2, (side - H) // 2  # same offsets as pad_to_square
        step = side / g
        r = torch.arange(g, dtype=torch.float64)
        x0 = (r * step - ox).clamp(0, W)
        x1 = ((r + 1) * step - ox).clamp(0, W)
        y0 = (r * step - oy).clamp(0, H)
        y1 = ((r + 1) * step - oy).clamp(0, H)
        boxes = torch.stack(torch.broadcast_tensors(x0[None, :], y0[:, None], x1[None, :], y1[:, None]), -1)
        return TokenLayout(positions=pos.view(g, g).cpu(), cell_boxes=boxes.float(), image_size=(W, H))
