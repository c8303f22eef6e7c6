"""Baseline visual-cropping methods on the same adapters as FOCUS (our own implementations from the papers):
ZoomEye (tree search, `zoomeye`) and ViCrop (attention maps, `vicrop`). SEAL and DC2 need other models or
lack complete code: their rows are the paper's reported numbers in data/paper_results.csv."""
from __future__ import annotations

from focuslib.eval.baselines.vicrop import ViCrop, vicrop_preset
from focuslib.eval.baselines.zoomeye import ZoomEye, zoomeye_preset, ZoomEyeConfig

BASELINE_METHODS = ("zoomeye", "vicrop-rel", "vicrop-grad")


def make_baseline(mllm, method: str, max_new_tokens: int = 16, **options):
    """The runner's entry: a baseline object with `.config.max_new_tokens` and `.answer(...)`.

    zoomeye options: depth, children, answer_threshold, ... (ZoomEyeConfig fields);
    vicrop-rel / vicrop-grad options: high, layer, tile, ... (ViCropConfig fields)."""
    options = {k: v for k, v in options.items() if v is not None}
    if method == "zoomeye":
        return ZoomEye(mllm, zoomeye_preset(mllm.family, max_new_tokens=max_new_tokens, **options))
    if method in ("vicrop-rel", "vicrop-grad"):
        return ViCrop(mllm, vicrop_preset(mllm.family, variant=method.split("-")[1],
                                          max_new_tokens=max_new_tokens, **options))
    raise ValueError(f"unknown baseline {method!r}; use one of {BASELINE_METHODS}")


def baseline_tag(method: str, options: dict | None) -> str:
    """Run-name suffix of a baseline's options, e.g. 'd2c4' or 'high'."""
    o = {k: v for k, v in (options or {}).items() if v is not None}
    if method == "zoomeye":
        d = ZoomEyeConfig()
        tag = f"d{o.get('depth', d.depth)}c{o.get('children', d.children)}"
    else:
        tag = "high" if o.get("high", True) else "low"
    extra = sorted(k for k in o if k not in ("depth", "children", "high"))
    return tag + "".join(f"-{k}{o[k]}" for k in extra)


__all__ = ["BASELINE_METHODS", "make_baseline", "baseline_tag"]
