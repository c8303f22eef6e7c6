"""FOCUS hyperparameters as presets (paper Tab. 7), never literals scattered in code.

A preset is data: base values per model family, overrides per benchmark, and the one rule
of Tab. 7 that depends on the budget (LLaVA-1.5's k = 15 if n_steps < 4 else 30).
`preset(family, benchmark, n_steps, **overrides)` turns it into a frozen `FocusConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

MapVariant = Literal["vv", "kk", "random"]


@dataclass(frozen=True)
class FocusConfig:
    # budget (the only knob the paper varies)
    n_steps: int = 8
    overrun: bool = True
    # ROI proposal (sec. 3.3, A.5 Algorithm)
    k: int = 30
    s_min: int = 3
    s_max: int = 5
    s_dist: float = 3.0
    t_expand: float = 0.5          # growth threshold, relative to the anchor's relevance (decisions.md D4)
    nms_threshold: float = 0.3
    # relevance map (sec. 3.2, Fig. 7)
    layers: tuple[int, int] = (14, 32)   # half-open [l, L) of 0-based decoder layers ...
    ref_layers: int = 32                 # ... of a model with this depth; scaled for other depths
    map_variant: MapVariant = "vv"       # vv (paper), kk (keys without RoPE, ablation), random (ablation)
    clamp_negative: bool = True          # decisions.md D3
    gaussian_sigma: float | None = None  # global-local models only (decisions.md D6)
    downsample: int = 1
    # ranking / final inference (A.5)
    ranking: bool = True                 # False = "no ranking" ablation: answer on the top-relevance ROI
    t_type2: float = 0.6
    t_obj_dist: float = 1200.0
    canvas_max_crop_side: int | None = None
    verify_batch_size: int = 16          # crops per batched existence forward (type-2 verifies all ROIs)
    max_new_tokens: int = 16
    seed: int = 0                        # random-map ablation

    def resolved_layers(self, num_layers: int) -> range:
        """Layer indices for a model with `num_layers` decoder layers.

        The paper's ranges are for 32 (LLaVA-1.5) / 28 (Qwen2-7B in OV) layers; tiny or other
        models get the same fraction of depth.
        """
        l, L = self.layers
        if num_layers != self.ref_layers:
            l = int(round(l * num_layers / self.ref_layers))
            L = int(round(L * num_layers / self.ref_layers))
        l, L = max(0, min(l, num_layers - 1)), max(1, min(L, num_layers))
        if L <= l:
            L = l + 1
        return range(l, L)


# Tab. 7. "base" applies always; "benchmarks" overrides per benchmark; "k_small_budget" is
# (n_steps threshold, k below it) for LLaVA-1.5.
PRESETS: dict[str, dict] = {
    "llava-1.5": {
        "base": dict(k=30, s_min=3, s_max=5, s_dist=3.0, layers=(14, 32), ref_layers=32,
                     t_type2=0.6, t_obj_dist=1200.0),
        "benchmarks": {"vstar": dict(s_dist=2.0)},
        "k_small_budget": (4, 15),
    },
    "llava-onevision": {
        # Tab. 7 uses l=21..L=28; sec. 4.1 says 14..28 (decisions.md D1): the notebook exposes both.
        "base": dict(k=30, s_min=3, s_max=5, s_dist=2.0, layers=(21, 28), ref_layers=28,
                     t_type2=0.5, t_obj_dist=float("inf"), gaussian_sigma=1.0, downsample=2),
        "benchmarks": {"vstar": dict(s_max=9)},
        "k_small_budget": None,
    },
    "qwen2.5-vl": {
        # not in Tab. 7: chosen from A.3's advice (decisions.md D13); the merged-patch grid is not pooled
        "base": dict(k=30, s_min=3, s_max=7, s_dist=2.0, layers=(14, 28), ref_layers=28,
                     t_type2=0.5, t_obj_dist=float("inf"), gaussian_sigma=1.0, downsample=1),
        "benchmarks": {"vstar": dict(s_max=9)},
        "k_small_budget": None,
    },
}

BENCHMARK_ALIASES = {"vstar": "vstar", "v*": "vstar", "vstar_bench": "vstar", "synthetic": "vstar",
                     "hrbench4k": "hrbench", "hrbench8k": "hrbench", "hr-bench": "hrbench"}


def preset(family: str, benchmark: str | None = None, n_steps: int = 8, **overrides) -> FocusConfig:
    """Tab. 7 hyperparameters for a model family, benchmark and budget, plus explicit overrides."""
    if family not in PRESETS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(PRESETS)}")
    p = PRESETS[family]
    values = dict(p["base"])
    bench = BENCHMARK_ALIASES.get((benchmark or "").lower(), (benchmark or "").lower())
    values.update(p["benchmarks"].get(bench, {}))
    if p["k_small_budget"] is not None and n_steps < p["k_small_budget"][0]:
        values["k"] = p["k_small_budget"][1]
    values["n_steps"] = n_steps
    known = {f.name for f in fields(FocusConfig)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown FOCUS hyperparameter(s) {sorted(bad)}; known: {sorted(known)}")
    values.update(overrides)
    return FocusConfig(**values)


__all__ = ["FocusConfig", "PRESETS", "preset", "replace"]
