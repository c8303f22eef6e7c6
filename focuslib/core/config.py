"""FOCUS hyperparameters as presets (paper Tab. 7), never literals scattered in code.

A preset is data: base values per model family, overrides per benchmark, and the one rule
of Tab. 7 that depends on the budget (LLaVA-1.5's k = 15 if n_steps < 4 else 30).
`preset(family, benchmark, n_steps, **overrides)` turns it into a frozen `FocusConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from focuslib.images import FocusInputError

MapVariant = Literal["vv", "kk", "random"]
GrowthRule = Literal["map-mean", "anchor"]       # decisions.md D4
RolloutNorm = Literal["row", "fig7-literal"]     # decisions.md D2


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
    t_expand: float = 0.5          # growth threshold, x mean(map) ("map-mean") or x A[anchor] ("anchor"), D4
    growth_rule: GrowthRule = "map-mean"
    nms_threshold: float = 0.3
    # relevance map (sec. 3.2, Fig. 7)
    layers: tuple[int, int] = (14, 32)   # half-open [l, L) of 0-based decoder layers ...
    ref_layers: int = 32                 # ... of a model with this depth; scaled for other depths
    map_variant: MapVariant = "vv"       # vv (paper), kk (keys without RoPE, ablation), random (ablation)
    clamp_negative: bool = True          # decisions.md D3
    rollout_norm: RolloutNorm = "row"    # Fig. 7's (S+I)/2 divided by its row sums, or literally (D2)
    gaussian_sigma: float | None = None  # global-local models only (decisions.md D6)
    downsample: int = 1
    # ranking / final inference (A.5)
    ranking: bool = True                 # False = "no ranking" ablation: answer on the top-relevance ROI
    t_type2: float = 0.6
    t_obj_dist: float = 1200.0
    # final input of single-image models, ZoomEye's composition (decisions.md D8/D9): every chosen box is
    # enlarged around its centre to >= final_min_side px, boxes closer than 2*merge_buffer px are merged,
    # canvas blocks are scaled so the largest side is canvas_max_crop_side, canvas_gap px apart
    final_min_side: int | None = 336     # the encoder's base resolution; None = crops as proposed
    merge_buffer: int = 50
    canvas_max_crop_side: int | None = 336
    canvas_gap: int = 0
    # final input of multi-image models (decisions.md D10): the same enlarging (then x final_scale, ZoomEye's
    # patch_scale) and merging, and a caption after each image saying which is the global view and which the
    # close-ups (ZoomEye's two-image prompt structure); False = images only, the question right after them
    final_scale: float | None = None
    final_captions: bool = True
    verify_batch_size: int = 16          # crops per batched existence forward (type-2 verifies all ROIs)
    max_new_tokens: int = 16
    seed: int = 0                        # random-map ablation

    def resolved_layers(self, num_layers: int) -> range:
        """Layer indices for a model with `num_layers` decoder layers.

        The paper's ranges are for 32 (LLaVA-1.5) / 28 (Qwen2-7B in OV) layers; tiny or other
        models get the same fraction of depth. A range outside 0..ref_layers or empty raises
        FocusInputError naming both depths (decisions.md D36); a non-empty range that rounds to
        nothing on a shallow model keeps one layer (the trace records the resolved range).
        """
        l, L = self.layers
        if not (0 <= l < L <= self.ref_layers):
            raise FocusInputError(
                f"layer range [{l}, {L}) is {'empty' if L <= l else 'out of range'}: give 0 <= l < L <= "
                f"{self.ref_layers} in the preset's numbering (a {self.ref_layers}-layer model; this model has "
                f"{num_layers} layers, and the range is scaled to them)")
        if num_layers != self.ref_layers:
            l = int(round(l * num_layers / self.ref_layers))
            L = int(round(L * num_layers / self.ref_layers))
        l, L = max(0, min(l, num_layers - 1)), max(1, min(L, num_layers))
        if L <= l:
            L = l + 1
        return range(l, L)


# Tab. 7. "base" applies always; "benchmarks" overrides per benchmark; "k_small_budget" is
# (n_steps threshold, k below it) for LLaVA-1.5, which a benchmark may override (decisions.md D30).
PRESETS: dict[str, dict] = {
    "llava-1.5": {
        "base": dict(k=30, s_min=3, s_max=5, s_dist=3.0, layers=(14, 32), ref_layers=32,
                     t_type2=0.6, t_obj_dist=1200.0, final_min_side=336, merge_buffer=50,
                     canvas_max_crop_side=336, canvas_gap=0),
        # Tab. 7 says k = 15 if n_steps < 4; Tab. 10's HR-Bench FPs only fit a switch below 3 (D30)
        "benchmarks": {"vstar": dict(s_dist=2.0), "hrbench": dict(k_small_budget=(3, 15))},
        "k_small_budget": (4, 15),
    },
    "llava-onevision": {
        # Tab. 7 uses l=21..L=28; sec. 4.1 says 14..28 (decisions.md D1): the notebook exposes both.
        "base": dict(k=30, s_min=3, s_max=5, s_dist=2.0, layers=(21, 28), ref_layers=28,
                     t_type2=0.5, t_obj_dist=float("inf"), gaussian_sigma=1.0, downsample=2,
                     final_min_side=384, final_scale=1.2, merge_buffer=50),   # ZoomEye's OV views (D10)
        "benchmarks": {"vstar": dict(s_max=9)},
        "k_small_budget": None,
    },
    "qwen2.5-vl": {
        # not in Tab. 7: chosen by A.3's rule for the real grid at INPUTS' max_pixels (decisions.md D13):
        # the merged-patch map pooled 2x has OV-like cells (56 px on V*/HR-4K, 99 px on HR-8K), and s_max 9
        # of them spans 1.1-2x ZoomEye's 448 px Qwen input size on every benchmark
        "base": dict(k=30, s_min=3, s_max=9, s_dist=2.0, layers=(14, 28), ref_layers=28,
                     t_type2=0.5, t_obj_dist=float("inf"), gaussian_sigma=1.0, downsample=2,
                     final_min_side=448, final_scale=1.2, merge_buffer=50),   # ZoomEye's Qwen views (D10)
        "benchmarks": {},
        "k_small_budget": None,
    },
}

# Input settings of each family's adapter that the presets above assume (`load_mllm(..., **INPUTS[f])`,
# the adapters' defaults). Qwen2.5-VL: the real checkpoint's preprocessor_config.json (min_pixels 3136,
# max_pixels 12845056 = 28*28*16384), uncapped (decisions.md D13). LLaVA-OV: every image of the final
# multi-image prompt anyres-tiled, as transformers 4.46 (the paper's) did (decisions.md D10).
INPUTS: dict[str, dict] = {
    "llava-1.5": {},
    "llava-onevision": {"interleave": "anyres"},
    "qwen2.5-vl": {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384},
}

# The system line of each family's chat format (decisions.md D32): what the paper's lmms-eval-style runs
# had, i.e. the LLaVA conversation templates lmms-eval and ZoomEye use (vicuna_v1 / "v1" for LLaVA-1.5,
# qwen_1_5 for LLaVA-OV) and Qwen2.5-VL's own chat-template default. "" = no system line. Override per run
# with `load_mllm(..., system=...)`; a checkpoint built by this kit may set "system" in its focuslib.json.
VICUNA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's questions.")
SYSTEM_LINES: dict[str, str] = {
    "llava-1.5": VICUNA_V1_SYSTEM,
    "llava-onevision": "You are a helpful assistant.",
    "qwen2.5-vl": "You are a helpful assistant.",
}

# The preset groups a benchmark may select (eval.benchmarks' BenchmarkSpec.preset); benchmark names and their
# aliases resolve in ONE table, eval.benchmarks.ALIASES: `preset(family, get_spec(name).preset)`.
PRESET_BENCHMARKS = ("vstar", "hrbench", "mme", "aokvqa", "gqa")


def preset(family: str, benchmark: str | None = None, n_steps: int = 8, **overrides) -> FocusConfig:
    """Tab. 7 hyperparameters for a model family, preset benchmark group (PRESET_BENCHMARKS; None: the family's
    base preset) and budget, plus explicit overrides."""
    if family not in PRESETS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(PRESETS)}")
    p = PRESETS[family]
    values = dict(p["base"])
    if benchmark and benchmark not in PRESET_BENCHMARKS:
        raise FocusInputError(f"unknown preset benchmark {benchmark!r}; known: {list(PRESET_BENCHMARKS)} (a benchmark "
                              "name or alias gives its group: focuslib.eval.benchmarks.get_spec(name).preset)")
    values.update(p["benchmarks"].get(benchmark or "", {}))
    small = values.pop("k_small_budget", p["k_small_budget"])
    if small is not None and n_steps < small[0]:
        values["k"] = small[1]
    try:
        bad = isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise FocusInputError(f"n_steps must be a positive integer (the search budget), got {n_steps!r}")
    values["n_steps"] = int(n_steps)
    known = {f.name for f in fields(FocusConfig)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown FOCUS hyperparameter(s) {sorted(bad)}; known: {sorted(known)}")
    values.update(overrides)
    return FocusConfig(**values)


__all__ = ["FocusConfig", "INPUTS", "PRESETS", "preset", "replace"]
