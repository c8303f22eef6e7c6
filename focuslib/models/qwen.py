"""Qwen2.5-VL adapter (`Qwen/Qwen2.5-VL-7B-Instruct`) on Qwen2_5_VLForConditionalGeneration.

Token layout (transformers 5.23): the image is `smart_resize`d to (Hr, Wr), multiples of 28 with
min_pixels <= Hr*Wr <= max_pixels; the vision tower embeds 14 x 14 patches and its merger joins 2 x 2
of them, so `<|image_pad|>` between `<|vision_start|>` and `<|vision_end|>` is repeated
(Hr/28)*(Wr/28) times, row-major over the (Hr/28) x (Wr/28) grid (the window permutation inside the
tower is undone before the merger output is returned). Token (r, c) covers [28c, 28(c+1)) x [28r, 28(r+1))
resized pixels = that box scaled by (W/Wr, H/Hr) in the original image. There is no separate global view:
the whole merged grid is the relevance grid. The 3-D rope ids (`get_rope_index`) give each token's
(row, col) independently and are used as a cross-check in the tests (`rope_cells`).

min_pixels / max_pixels are adapter settings passed to the processor on EVERY call (as `size`), so the
layout and the processor can never disagree. Default: `config.INPUTS["qwen2.5-vl"]`, the real checkpoint's
preprocessor_config.json values, min_pixels 3136 and max_pixels 12845056 (= 28*28*16384, NOT 28*28*1280):
a V*Bench image (2246x1582) is kept at native resolution, a 56 x 80 grid = 4480 tokens; a 3840x2160 HR-4K
image 77 x 137 = 10549; an HR-8K image (7431x5358) is shrunk to 108 x 150 = 16200 (decisions.md D13).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from PIL import Image

from focuslib.core.config import INPUTS, SYSTEM_LINES
from focuslib.models.base import chatml_prompt, MLLM, TokenLayout
from focuslib.models.registry import register_family


@functools.lru_cache(maxsize=None)
def processor_class():
    """Qwen2_5_VLProcessor without the video processor (see onevision.processor_class)."""
    from transformers import Qwen2_5_VLProcessor

    class FocusQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return FocusQwen2_5_VLProcessor


@register_family("qwen2.5-vl", model_type="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration",
                 alias="qwen2.5-vl-7b", hub_id="Qwen/Qwen2.5-VL-7B-Instruct", paper_name="Qwen2.5-VL-7B")
class QwenVLAdapter(MLLM):
    multi_image = True
    answer_prefix = ""   # the answer starts right after "<|im_start|>assistant\n"

    def __init__(self, model, processor, name: str = "", min_pixels: int | None = None,
                 max_pixels: int | None = None, system: str | None = None):
        """min_pixels / max_pixels: bounds of smart_resize (default: `config.INPUTS["qwen2.5-vl"]`, the
        values the preset is tuned for = Qwen2.5-VL-7B-Instruct's own, 3136 and 12845056), whatever the
        checkpoint's processor config says."""
        super().__init__(model, processor, name)
        self.system = SYSTEM_LINES[self.family] if system is None else system   # "" = no system turn
        default = INPUTS[self.family]
        self.min_pixels = int(min_pixels if min_pixels is not None else default["min_pixels"])
        self.max_pixels = int(max_pixels if max_pixels is not None else default["max_pixels"])
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        vc = model.config.vision_config
        self.merge = int(vc.spatial_merge_size)
        self.unit = int(vc.patch_size) * self.merge                          # 28 px per LLM token
        self.image_token_id = model.config.image_token_id

    @classmethod
    def load_processor(cls, name: str, **kw):
        return processor_class().from_pretrained(name, **kw)

    def prompt(self, text: str | Sequence[str], n_images: int) -> str:
        """Qwen2.5-VL chat template with its default system turn, add_generation_prompt=True. text = [caption
        per image..., question]: each image followed by its caption + "\n", as the template renders
        ZoomEye's [image, text, image, text] content (decisions.md D10)."""
        return chatml_prompt(self.system, "<|vision_start|><|image_pad|><|vision_end|>", "", text, n_images)

    @property
    def decoder_layers(self):
        return list(self.model.model.language_model.layers)

    @property
    def size(self) -> dict:
        return {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}

    def build_inputs(self, images, texts, offsets: bool = False):
        kw = dict(return_offsets_mapping=True) if offsets else {}
        flat = [im for ims in images for im in ims]   # Qwen: images consumed in order of the placeholders
        if flat:
            kw["size"] = self.size
        return self.processor(images=flat or None, text=texts, return_tensors="pt", padding=True, **kw)

    def resized_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(Wr, Hr) after smart_resize with this adapter's pixel bounds."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        W, H = image_size
        Hr, Wr = smart_resize(H, W, factor=self.unit, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return Wr, Hr

    def num_image_tokens(self, image_size: tuple[int, int]) -> int:
        Wr, Hr = self.resized_size(image_size)
        return (Wr // self.unit) * (Hr // self.unit)

    def layout(self, image: Image.Image, inputs, index: int = 0) -> TokenLayout:
        ids = inputs["input_ids"][index]
        pos = torch.nonzero(ids == self.image_token_id).flatten()
        W, H = image.size
        Wr, Hr = self.resized_size(image.size)
        gh, gw = Hr // self.unit, Wr // self.unit
        if pos.numel() != gh * gw:
            raise RuntimeError(f"expected {gh * gw} image tokens for one {image.size} image, found {pos.numel()}")
        thw = inputs.get("image_grid_thw")
        if thw is not None and len(thw) > index:   # one image per prompt in relevance passes
            t, h, w = (int(v) for v in thw[index])
            if (h // self.merge, w // self.merge) != (gh, gw):
                raise RuntimeError(f"processor grid {(t, h, w)} does not match the layout {(gh, gw)}")
        u = self.unit
        xs = torch.arange(gw + 1, dtype=torch.float64) * u * W / Wr
        ys = torch.arange(gh + 1, dtype=torch.float64) * u * H / Hr
        boxes = torch.stack(torch.broadcast_tensors(xs[None, :-1], ys[:-1, None], xs[None, 1:], ys[1:, None]), -1)
        return TokenLayout(positions=pos.view(gh, gw).cpu(), cell_boxes=boxes.float(), image_size=(W, H))

    def rope_cells(self, inputs, layout: TokenLayout, index: int = 0) -> torch.Tensor:
        """`[h, w, 2]` (row, col) of each layout cell from the model's own 3-D rope position ids."""
        pos_ids, _ = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs.get("attention_mask"))
        p = pos_ids[:, index][:, layout.positions.flatten()]            # [3, h*w] (t, h, w)
        rc = torch.stack([p[1] - p[1].min(), p[2] - p[2].min()], -1)
        return rc.view(*layout.shape, 2)
