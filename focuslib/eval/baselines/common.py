"""What the baselines share: Yes/No confidences with any prompt and their presets (their trace and clock are
focuslib.core.trace's BaselineTrace and Clock).

`yes_no_logits(mllm, images, text, purpose)` is the adapters' `ask_yes_no` with a purpose: ONE batched forward
of `text` with each image, last-position (l_yes, l_no). Paper accounting (A.2, decisions.md D22): every image
in it is one forward pass, so `mllm.calls[purpose]` grows by the number of images (a batch of n crops = n FPs,
as FOCUS's verified crops in D12). Test fakes implement the same adapter methods (ask_yes_no, ask_views).
"""
from __future__ import annotations

import torch
from PIL import Image

from focuslib.models.base import yes_confidence


def yes_no_logits(mllm, images: list[Image.Image], text: str, purpose: str) -> torch.Tensor:
    """`[B, 2]` (l_yes, l_no) of the yes/no question `text` about each image; B forward passes counted."""
    if not images:
        return torch.zeros(0, 2)
    return mllm.ask_yes_no(images, text, purpose=purpose)


def confidences(mllm, images: list[Image.Image], text: str, purpose: str) -> list[float]:
    """c = 2 * (softmax([l_yes, l_no])_yes - 0.5) in [-1, 1] per image (A.5 eq. 5)."""
    return [float(c) for c in yes_confidence(yes_no_logits(mllm, images, text, purpose)).tolist()]


def view_confidence(mllm, images: list[Image.Image], text: str | list[str], purpose: str) -> float:
    """c of the yes/no question `text` about several images in ONE prompt (ZoomEye's two-image views of
    multi-image models): one forward pass, counted as one. `text` may be [caption per image..., question]
    (the adapters' `prompt` puts each caption after its image)."""
    return float(yes_confidence(mllm.ask_views(images, text, purpose=purpose))[0])


def build_preset(cls, presets: dict, family: str, name: str, overrides: dict):
    """A baseline's config: the family's preset (data) plus explicit non-None overrides, unknown keys refused."""
    values = dict(presets.get(family, {}))
    known = set(cls.__dataclass_fields__)
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown {name} option(s) {sorted(bad)}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
