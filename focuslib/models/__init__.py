"""Model adapters, one per family, and `load_mllm` to load any of them by hub id or local path."""
from __future__ import annotations

import os

import torch

from .base import EXISTENCE_PROMPT, MLLM, RelevancePass, TokenLayout, yes_confidence
from .llava import LlavaAdapter
from .onevision import OneVisionAdapter
from .qwen import QwenVLAdapter

# config.model_type -> (adapter class, transformers model class name)
FAMILIES: dict[str, tuple[type[MLLM], str]] = {
    "llava": (LlavaAdapter, "LlavaForConditionalGeneration"),
    "llava_onevision": (OneVisionAdapter, "LlavaOnevisionForConditionalGeneration"),
    "qwen2_5_vl": (QwenVLAdapter, "Qwen2_5_VLForConditionalGeneration"),
}

HUB_IDS = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-ov-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None


def load_mllm(name_or_path: str, device: str | None = None, dtype="auto",
              attn_implementation: str = "sdpa", **adapter_kwargs) -> MLLM:
    """Load a supported MLLM by hub id (or a short alias from HUB_IDS) or local path.

    adapter_kwargs go to the family's adapter, e.g. `max_pixels=...` / `min_pixels=...` (Qwen2.5-VL),
    `vision_aspect_ratio="anyres_max_9"`, `image_grid_pinpoints=...`, `interleave=...` (LLaVA-OneVision).

    Attention stays SDPA/flash: FOCUS never needs attention weights.
    """
    import transformers
    from transformers import AutoConfig, AutoProcessor

    name = HUB_IDS.get(name_or_path, name_or_path)
    device = device or default_device()
    dt = resolve_dtype(dtype, device)
    try:
        cfg = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = "local path" if os.path.exists(name) else "hub id"
        raise RuntimeError(
            f"cannot load model config for {where} {name!r}: {e.__class__.__name__}: {str(e).splitlines()[0]}\n"
            "If this machine has no network, download the checkpoint on a connected machine "
            "(huggingface-cli download ...) and pass its local path, or use the embedded tiny model "
            "(`focus demo`).") from e
    if cfg.model_type not in FAMILIES:
        raise ValueError(f"model type {cfg.model_type!r} of {name!r} is not supported; "
                         f"supported: {sorted(FAMILIES)}")
    adapter_cls, model_cls = FAMILIES[cfg.model_type]
    model = getattr(transformers, model_cls).from_pretrained(
        name, dtype=dt, attn_implementation=attn_implementation).to(device)
    loader = getattr(adapter_cls, "load_processor", None)
    processor = loader(name) if loader else AutoProcessor.from_pretrained(name)
    return adapter_cls(model, processor, name=name, **adapter_kwargs)


__all__ = ["MLLM", "TokenLayout", "RelevancePass", "EXISTENCE_PROMPT", "yes_confidence",
           "load_mllm", "LlavaAdapter", "OneVisionAdapter", "QwenVLAdapter", "FAMILIES", "HUB_IDS"]
