"""LLaVA-1.5 adapter (`llava-hf/llava-1.5-7b-hf`) on transformers' LlavaForConditionalGeneration.

Token layout: `<image>` expands to a row-major g x g grid (g = 336 / 14 = 24) of the processed
image. HF's processor resizes + centre-crops, which would hide the sides of a wide image, so we
pad to square with the mean colour first, as original LLaVA-1.5 does; the crop is then a no-op
and each cell maps back through the padding to a box of the original image.
"""
from __future__ import annotations

import warnings

import torch
from PIL import Image

from focuslib.core.config import SYSTEM_LINES
from focuslib.images import pad_to_square
from focuslib.models.base import MLLM, TokenLayout
from focuslib.models.registry import register_family


def fix_processor(processor, config) -> list[str]:
    """Fill the processor fields an older llava-hf snapshot lacks; returns what was fixed.

    Older llava-1.5 `processor_config.json` files have no `num_additional_image_tokens`: transformers then
    assumes 0 and expands `<image>` to (336/14)^2 - 1 = 575 tokens while the model emits 576 features
    ("expected 576 image tokens, found 575"). LLaVA-1.5's CLIP tower always prepends the CLS token (which
    the "default" strategy drops), so the right value is 1. Missing `patch_size` / strategy come from the
    model config, which is what the processor must agree with.
    """
    fixed = []
    vc = config.vision_config
    if getattr(processor, "patch_size", None) is None:
        processor.patch_size = int(vc.patch_size)
        fixed.append(f"patch_size={processor.patch_size}")
    if getattr(processor, "vision_feature_select_strategy", None) is None:
        processor.vision_feature_select_strategy = config.vision_feature_select_strategy
        fixed.append(f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}")
    if getattr(vc, "model_type", "") == "clip_vision_model" and not getattr(processor, "num_additional_image_tokens", 0):
        processor.num_additional_image_tokens = 1   # the CLS token
        fixed.append("num_additional_image_tokens=1")
    if fixed:
        warnings.warn("llava processor config is from an older snapshot; set " + ", ".join(fixed), stacklevel=3)
    return fixed


@register_family("llava-1.5", model_type="llava", model_class="LlavaForConditionalGeneration",
                 alias="llava-1.5-7b", hub_id="llava-hf/llava-1.5-7b-hf", paper_name="LLaVA-1.5-7B")
class LlavaAdapter(MLLM):
    multi_image = False

    def __init__(self, model, processor, name: str = "", system: str | None = None):
        """system: the chat format's system line (default config.SYSTEM_LINES: vicuna_v1's; "" = none)."""
        super().__init__(model, processor, name)
        self.system = SYSTEM_LINES[self.family] if system is None else system
        self.processor_fixes = fix_processor(processor, model.config)
        ip = processor.image_processor
        self.fill = tuple(int(round(x * 255)) for x in ip.image_mean)
        crop = getattr(ip, "crop_size", None) or {}
        size = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
        self.input_side = int(size or model.config.vision_config.image_size)
        self.grid = self.input_side // model.config.vision_config.patch_size
        self.image_token_id = model.config.image_token_id

    def prompt(self, text: str, n_images: int) -> str:
        # LLaVA's vicuna_v1 conversation (lmms-eval / ZoomEye, decisions.md D32) = the llava-hf chat template
        # ("USER: <image>\n{text} ASSISTANT:") with the system line in front
        system = self.system + " " if self.system else ""
        return system + "USER: " + "<image>\n" * n_images + text + " ASSISTANT:"

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
