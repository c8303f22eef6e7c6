"""Cost per question of vanilla, FOCUS, ZoomEye and ViCrop at the REAL widths of the three 7B checkpoints.

    python benchmarks/bench_methods.py --models llava-1.5 --sizes 2K 4K 8K --layers 2 --vision-layers 2 \
        --out benchmarks/results_methods_cpu.md                                    # CPU, reduced depth
    python benchmarks/bench_methods.py --models llava-1.5 llava-onevision qwen2.5-vl --sizes 1K 2K 4K 8K \
        --device cuda --dtype bfloat16 --out benchmarks/results_methods_gpu.md    # GPU, full depth

Models: random weights, the real configurations (widths, heads, GQA, vocab sizes, vision towers, processors;
/work/shared/notes/real-checkpoints.md) with the decoder cut to `--layers` and the vision tower to
`--vision-layers` (default: full depth). Real tokenizers when focuslib.offline.mini_real can build them, else the
tiny byte-level BPE (text token counts then differ a little; image token counts never do).

Random weights would make every search path arbitrary, so the DECISIONS are scripted while every forward
pass runs for real at full width: the image has one planted cyan disc (the target); FOCUS's map is planted
on the cell holding it (`map_hook`); every yes/no forward (FOCUS verification, ZoomEye's c_e / c_l / c_a)
runs and its logits are then replaced by Yes when the image shown contains the disc (ZoomEye's answering
confidence only once the disc covers 1% of the encoder's input), No otherwise: a perfect searcher, so
ZoomEye's FP counts are its shortest path (a lower bound of the paper's 48.63 at Depth-5). The ICL target extraction and
the final answers run unscripted (random text up to the token caps; the target then comes from the keyword
fallback); their LENGTHS are scripted (`--icl-tokens`, `--answer-tokens`: random weights never write the
newline / end-of-turn that a real model writes after "ball" or "A", so without a cap every question would
decode 24 + 16 tokens). ViCrop's cost does not depend on its map (a fixed number of attention forwards).

Per question and method: wall time per step, sequential LLM forwards (every decode step included), model
calls and search FPs (paper accounting), tokens through the LLM (padding included), FLOPs (torch's
FlopCounterMode over the whole question, during the timed run), peak memory (CUDA max allocated
above the model; on CPU the process RSS sampled every 2 ms, above the RSS before the question). Every figure
also as a ratio to vanilla measured in the same run.
"""
from __future__ import annotations

import argparse
import functools
import math
import platform
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

# ---- the real architectures (data) --------------------------------------------------------------------------
REAL_ARCH: dict[str, dict] = {
    "llava-1.5": dict(text=dict(hidden=4096, inter=11008, layers=32, heads=32, kv=32, vocab=32064),
                      vision=dict(hidden=1024, inter=4096, layers=24, heads=16)),
    "llava-onevision": dict(text=dict(hidden=3584, inter=18944, layers=28, heads=28, kv=4, vocab=152128),
                            vision=dict(hidden=1152, inter=4304, layers=26, heads=16)),
    "qwen2.5-vl": dict(text=dict(hidden=3584, inter=18944, layers=28, heads=28, kv=4, vocab=152064),
                       vision=dict(hidden=1280, inter=3420, layers=32, heads=16, out=3584,
                                   fullatt=[7, 15, 23, 31])),
}
# benchmark-sized images (W, H): V*Bench averages about 2246 x 1582; HR-Bench 4K / 8K are ~UHD / 8K UHD
SIZES: dict[str, tuple[int, int]] = {"1K": (1024, 768), "2K": (2246, 1582), "4K": (3840, 2160),
                                     "8K": (7680, 4320)}
QUESTION = "What is the color of the ball?\n(A) red\n(B) blue\n(C) green\n(D) white"
TARGET_RGB = (0, 255, 255)   # cyan: the outlines FOCUS / ZoomEye draw are red
ANSWER_AREA = 0.01            # c_a says Yes once the disc covers >= 1% of the encoder's input square


# ---- models -------------------------------------------------------------------------------------------------
# the Qwen2-family special tokens by role, as the mini-real and tiny builders name them
_NAMED_TOKENS = {
    "llava-onevision": {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "image_token": "<image>",
                        "video_token": "<video>"},
    "qwen2.5-vl": {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "image_token": "<|image_pad|>",
                   "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
                   "vision_end_token": "<|vision_end|>"},
}


def _tokenizer(family: str, tmp: Path):
    """The real tokenizer (focuslib.offline.mini_real) or, without its assets, the tiny byte-level BPE."""
    try:
        from focuslib.offline import mini_real as MR
        if family == "llava-1.5":
            return MR.build_llama_tokenizer(tmp / "tok"), "real"
        specials = MR.OV_SPECIALS if family == "llava-onevision" else MR.QWEN_SPECIALS
        return MR.build_qwen_tokenizer(specials, dict(_NAMED_TOKENS[family])), "real"
    except Exception:   # noqa: BLE001 -- assets missing: fall back, and say so in the table
        from focuslib.offline import tiny as T
        if family == "llava-1.5":
            return T.build_tokenizer(), "tiny BPE"
        if family == "llava-onevision":
            return T._build_family_tokenizer(
                ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                dict(_NAMED_TOKENS[family]), T._chatml_corpus("<image>")), "tiny BPE"
        return T._build_family_tokenizer(   # pops the standard roles out of `named`: give it a copy
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|image_pad|>", "<|video_pad|>"], dict(_NAMED_TOKENS[family]),
            T._chatml_corpus("<|vision_start|><|image_pad|><|vision_end|>")), "tiny BPE"


def build_real(family: str, layers: int | None = None, vision_layers: int | None = None, device: str = "cpu",
               dtype: torch.dtype = torch.float32, attn: str = "sdpa", tmp: Path = Path("/tmp/focus_bench")):
    """An adapter on a random-weight model with `family`'s real widths, `layers` decoder layers (default all)."""
    import transformers as T

    from focuslib.models import LlavaAdapter, OneVisionAdapter, QwenVLAdapter
    from focuslib.offline.mini_real import CLIP_MEAN, CLIP_STD
    from focuslib.offline.tiny import OV_GRID_PINPOINTS

    a = REAL_ARCH[family]
    t, v = dict(a["text"]), dict(a["vision"])
    t["layers"] = layers or t["layers"]
    v["layers"] = vision_layers or v["layers"]
    tok, tok_kind = _tokenizer(family, tmp / family)
    ids = lambda s: tok.convert_tokens_to_ids(s)   # noqa: E731
    text_kw = dict(vocab_size=max(t["vocab"], len(tok)), hidden_size=t["hidden"], intermediate_size=t["inter"],
                   num_hidden_layers=t["layers"], num_attention_heads=t["heads"], num_key_value_heads=t["kv"],
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    if family == "llava-1.5":
        ip = T.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                  do_center_crop=True, resample=3, image_mean=CLIP_MEAN,
                                  image_std=CLIP_STD)
        proc = T.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1)
        vis = T.CLIPVisionConfig(hidden_size=v["hidden"], intermediate_size=v["inter"], num_hidden_layers=v["layers"],
                                 num_attention_heads=v["heads"], image_size=336, patch_size=14, projection_dim=768)
        cfg = T.LlavaConfig(vision_config=vis, text_config=T.LlamaConfig(max_position_embeddings=4096,
                                                                          rms_norm_eps=1e-5, **text_kw),
                            image_token_id=ids("<image>"), vision_feature_layer=-2,
                            vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id)
        cls, adapter, kw = T.LlavaForConditionalGeneration, LlavaAdapter, {}
    elif family == "llava-onevision":
        from focuslib.models.onevision import processor_class
        ip = T.LlavaOnevisionImageProcessor(size={"height": 384, "width": 384}, image_grid_pinpoints=OV_GRID_PINPOINTS,
                                            resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pad=True)
        proc = processor_class()(image_processor=ip, tokenizer=tok, num_image_tokens=729,
                                 vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
        vis = T.SiglipVisionConfig(hidden_size=v["hidden"], intermediate_size=v["inter"], num_hidden_layers=v["layers"],
                                   num_attention_heads=v["heads"], image_size=384, patch_size=14, vision_use_head=False)
        cfg = T.LlavaOnevisionConfig(vision_config=vis, text_config=T.Qwen2Config(
            max_position_embeddings=32768, rope_theta=1e6, **text_kw),
            image_token_index=ids("<image>"), video_token_index=ids("<video>"), vision_feature_layer=-1,
            vision_feature_select_strategy="full", image_grid_pinpoints=OV_GRID_PINPOINTS,
            vision_aspect_ratio="anyres_max_9")
        cls, adapter, kw = T.LlavaOnevisionForConditionalGeneration, OneVisionAdapter, {}
    else:
        from focuslib.models.qwen import processor_class
        ip = T.Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2,
                                     merge_size=2, resample=3, image_mean=CLIP_MEAN,
                                     image_std=CLIP_STD)
        proc = processor_class()(image_processor=ip, tokenizer=tok)
        cfg = T.Qwen2_5_VLConfig(
            vision_config=dict(depth=v["layers"], hidden_size=v["hidden"], intermediate_size=v["inter"],
                               num_heads=v["heads"], out_hidden_size=v["out"], patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=[i for i in v["fullatt"] if i < v["layers"]]),
            text_config=dict(max_position_embeddings=128000,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                              "mrope_section": [16, 24, 24]}, **text_kw),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
        cls, adapter, kw = T.Qwen2_5_VLForConditionalGeneration, QwenVLAdapter, dict(max_pixels=12845056)
    cfg._attn_implementation = attn
    with torch.device(device):
        model = cls._from_config(cfg, dtype=dtype, attn_implementation=attn)
    mllm = adapter(model.eval(), proc, name=f"{family} (random weights, real widths)", **kw)
    mllm.bench_info = dict(text_layers=t["layers"], vision_layers=v["layers"], tokenizer=tok_kind,
                           full_text_layers=a["text"]["layers"], full_vision_layers=a["vision"]["layers"])
    return mllm


# ---- the planted image and the scripted decisions -----------------------------------------------------------
def make_image(size: tuple[int, int], seed: int = 0) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A textured image of `size` with one cyan disc (the target); returns (image, disc box)."""
    W, H = size
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(3, max(2, H // 64), max(2, W // 64), generator=g)
    tex = torch.nn.functional.interpolate(low[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    arr = (60 + 120 * tex).clamp(0, 254).permute(1, 2, 0).to(torch.uint8).numpy()
    # the background stays within 60..180: never the disc's pure cyan
    img = Image.fromarray(arr)
    r = max(8, W // 80)
    cx, cy = int(W * 0.71), int(H * 0.33)
    box = (cx - r, cy - r, cx + r, cy + r)
    ImageDraw.Draw(img).ellipse(box, fill=TARGET_RGB)
    return img, box


def target_pixels(im: Image.Image) -> int:
    """Pixels of the planted disc (pure cyan) in `im`."""
    import numpy as np
    a = np.asarray(im.convert("RGB")).astype(np.int16)
    return int(((a[..., 0] < 25) & (a[..., 1] > 230) & (a[..., 2] > 230)).sum())


def scripted_yes(im: Image.Image, question: str, base_side: int) -> bool:
    """Existence (FOCUS, ZoomEye c_e / c_l): the disc is visible at all. Answering (ZoomEye c_a, recognised by
    its prompts' "enough detail" / "large and sharp"): the disc covers >= ANSWER_AREA of the encoder's input
    once the view is resized to `base_side`."""
    n = target_pixels(im)
    if "enough detail" in question or "large and sharp" in question:
        return n * (base_side / max(im.size)) ** 2 >= ANSWER_AREA * base_side ** 2
    return n > 0


def script_yes_no(mllm, base_side: int):
    """Make every yes/no forward run for real, then answer by the planted target (`scripted_yes`)."""
    real = mllm.ask_yes_no
    logit = lambda yes: [4.0, -4.0] if yes else [-4.0, 4.0]   # noqa: E731

    def ask_yes_no(images, question, purpose=None):
        real(images, question, purpose)
        return torch.tensor([logit(scripted_yes(im, question, base_side)) for im in images]).view(-1, 2)

    def ask_views(images, text, purpose=None):   # ZoomEye's two-image views: one real forward, decided on the zoom
        inputs = mllm._to_device(mllm.build_inputs([list(images)], [mllm.prompt(text, len(images))]))
        with torch.no_grad():
            mllm._forward_batch(inputs, use_cache=False, logits_to_keep=1)
        mllm.calls[purpose] += 1
        return torch.tensor([logit(scripted_yes(images[-1], text, base_side))])

    mllm.ask_yes_no = ask_yes_no
    mllm.ask_views = ask_views
    return mllm


def script_lengths(mllm, icl_tokens: int, answer_tokens: int):
    """Cap the ICL continuation and the final answer at the lengths a real model writes ("ball" + newline;
    "A" + end of turn): random weights would decode to the caps (24 / 16 tokens) on every question."""
    gen, gen_text = mllm.generate, mllm.generate_text

    def generate(images, text, max_new_tokens=16, purpose="answer"):
        return gen(images, text, max_new_tokens=min(max_new_tokens, answer_tokens), purpose=purpose)

    def generate_text(prompt, max_new_tokens=24, purpose="targets", **kw):
        return gen_text(prompt, max_new_tokens=min(max_new_tokens, icl_tokens), purpose=purpose, **kw)

    mllm.generate, mllm.generate_text = generate, generate_text
    return mllm


def planted_map_hook(disc_box):
    """FOCUS map_hook: all relevance on the cell(s) holding the disc centre."""
    cx, cy = (disc_box[0] + disc_box[2]) / 2, (disc_box[1] + disc_box[3]) / 2

    def hook(target, layout, m):
        b = layout.cell_boxes
        inside = (b[..., 0] <= cx) & (cx < b[..., 2]) & (b[..., 1] <= cy) & (cy < b[..., 3])
        out = torch.full_like(m, 1e-6) * layout.valid
        out[inside] = 1.0
        return out
    return hook


# ---- measuring ----------------------------------------------------------------------------------------------
class LMCounter:
    """Forwards of the language model and the tokens that go through it (hooks on its embedding)."""

    def __init__(self, mllm):
        self.forwards, self.tokens = 0, 0
        emb = mllm.model.get_input_embeddings()
        self._h = emb.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        self.forwards += 1
        self.tokens += args[0].numel()

    def reset(self):
        self.forwards, self.tokens = 0, 0

    def close(self):
        self._h.remove()


class PeakMemory:
    """Peak memory above the start: CUDA max allocated, or process RSS sampled every 2 ms on CPU (GiB)."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil
            self.proc = psutil.Process()
            self.base = self.peak = self.proc.memory_info().rss
            self.stop = False
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.total = torch.cuda.max_memory_allocated() / 2**30
            self.extra = (torch.cuda.max_memory_allocated() - self.base) / 2**30
        else:
            self.stop = True
            self.thread.join()
            self.total = self.peak / 2**30
            self.extra = (self.peak - self.base) / 2**30


@dataclass
class Method:
    name: str
    kind: str          # vanilla | focus | zoomeye | vicrop
    options: dict


def methods(n_steps=(1, 2, 4, 8), depths=(1, 2, 5), which=("vanilla", "focus", "zoomeye", "vicrop"),
            no_overrun: bool = True) -> list[Method]:
    out = []
    if "vanilla" in which:
        out.append(Method("vanilla", "vanilla", {}))
    if "focus" in which:
        for n in n_steps:
            out.append(Method(f"FOCUS Steps-{n}", "focus", dict(n_steps=n, overrun=True)))
            if no_overrun:
                out.append(Method(f"FOCUS Steps-{n} w/o overrun", "focus", dict(n_steps=n, overrun=False)))
    if "icl-cache" in which:
        out.append(Method("FOCUS Steps-1, ICL w/o prefix cache", "focus", dict(n_steps=1, icl_cache=False)))
    if "zoomeye" in which:
        out += [Method(f"ZoomEye Depth-{d}", "zoomeye", dict(depth=d)) for d in depths]
    if "vicrop" in which:
        out.append(Method("ViCrop rel-att-high", "vicrop", {}))
    return out


def runner(mllm, method: Method, disc_box):
    """A callable (image, question) -> trace-like for `method` on `mllm` (already scripted)."""
    from focuslib.eval.baselines.vicrop import ViCrop, vicrop_preset
    from focuslib.eval.baselines.zoomeye import ZoomEye, zoomeye_preset
    from focuslib.core.config import preset
    from focuslib.core.search import Focus
    from focuslib.eval.solver import Vanilla, VanillaConfig

    if method.kind == "vanilla":
        return Vanilla(mllm, VanillaConfig(max_new_tokens=preset(mllm.family, "vstar").max_new_tokens)).answer
    if method.kind == "focus":
        opts = dict(method.options)
        cache = opts.pop("icl_cache", True)
        f = Focus(mllm, preset(mllm.family, "vstar", **opts), map_hook=planted_map_hook(disc_box))
        if cache:
            return f.answer

        def no_cache(im, q):      # the ICL prompt computed in full, as before the prefix cache
            gen = mllm.generate_text
            mllm.generate_text = lambda p, **kw: gen(p, use_prefix_cache=False, **kw)
            try:
                return f.answer(im, q)
            finally:
                mllm.generate_text = gen
        return no_cache
    if method.kind == "zoomeye":
        return ZoomEye(mllm, zoomeye_preset(mllm.family, **method.options)).answer
    return ViCrop(mllm, vicrop_preset(mllm.family, **method.options)).answer


def measure(mllm, method: Method, image, disc_box, device: str, flops: bool = True, reps: int = 1) -> dict:
    """One question, `reps` runs: times of the fastest (a shared machine only ever adds time), counts and memory
    of the last, FLOPs counted by FlopCounterMode during the last (a few microseconds per op, negligible beside
    full-width matmuls)."""
    from focuslib.eval.baselines.vicrop import ensure_eager

    switched = None
    if method.kind == "vicrop":
        switched = getattr(mllm.model.config, "_attn_implementation", None)
        ensure_eager(mllm)
    try:
        run = runner(mllm, method, disc_box)
        counter = LMCounter(mllm)
        best = None
        try:
            for rep in range(reps):     # the fastest run's times are reported; FLOPs counted during the last
                counter.reset()
                before = Counter(mllm.calls)
                fc = None
                if flops and rep == reps - 1:
                    from torch.utils.flop_counter import FlopCounterMode
                    fc = FlopCounterMode(display=False)
                    fc.__enter__()
                try:
                    with PeakMemory(device) as mem:
                        if device.startswith("cuda"):
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        tr = run(image, QUESTION)
                        if device.startswith("cuda"):
                            torch.cuda.synchronize()
                        wall = time.perf_counter() - t0
                finally:
                    if fc is not None:
                        fc.__exit__(None, None, None)
                if best is None or wall < best[0]:
                    best = (wall, dict(tr.timings or {}))
            total_flops = int(fc.get_total_flops()) if fc is not None else None
        finally:
            counter.close()
    finally:
        if switched and switched != "eager":
            mllm.model.set_attn_implementation(switched)
    calls = Counter(mllm.calls)
    calls.subtract(before)
    calls = {k: v for k, v in calls.items() if v and k != "verify_crops"}
    wall, steps = best
    steps.pop("total", None)
    return dict(method=method.name, kind=method.kind, time_s=wall, steps=steps, search_fp=int(tr.search_fp),
                model_calls=sum(calls.values()), lm_forwards=counter.forwards, tokens=counter.tokens,
                flops=total_flops, mem_total_gb=mem.total, mem_extra_gb=mem.extra, answer=tr.answer)


def map_share(mllm, image, layers_frac=None) -> dict:
    """The relevance map's cost against the relevance forward it reads (same depth, same image)."""
    from focuslib.core.config import preset
    from focuslib.core.relevance import object_relevance
    from torch.utils.flop_counter import FlopCounterMode

    cfg = preset(mllm.family, "vstar")
    t1 = time.perf_counter()
    with FlopCounterMode(display=False) as fc_pass:
        rp = mllm.relevance_pass(image, "ball")
    t_pass = time.perf_counter() - t1
    layers = cfg.resolved_layers(mllm.num_layers)
    vis = rp.layout.positions.flatten()
    with FlopCounterMode(display=False) as fc_map:
        object_relevance(rp.values, rp.target_idx, vis, layers)
    t2 = time.perf_counter()
    for _ in range(3):
        object_relevance(rp.values, rp.target_idx, vis, layers)
    t_map = (time.perf_counter() - t2) / 3
    return dict(seq_len=rp.seq_len, pass_s=t_pass, map_s=t_map, pass_flops=int(fc_pass.get_total_flops()),
                map_flops=int(fc_map.get_total_flops()))


def logits_memory(mllm, image, device: str) -> dict:
    """Peak memory of the relevance forward with logits for every position (what the pass did before) and for
    the last one only (what it does now), GiB above the start; and the full logits' size at 8K on Qwen2.5-VL."""
    from focuslib.models.base import EXISTENCE_PROMPT
    text = mllm.prompt(EXISTENCE_PROMPT.format(target="ball"), 1)
    inputs = mllm._to_device(mllm.build_inputs([[image]], [text]))
    out = {}
    for keep in (0, 1):
        with torch.no_grad(), PeakMemory(device) as mem:
            r = mllm.model(**inputs, use_cache=False, logits_to_keep=keep)
            del r
        out["all" if keep == 0 else "last"] = mem.extra
    return out


def map_share_full_depth(family: str, image_size: tuple[int, int], device: str = "cpu") -> dict:
    """The map at a FULL-depth 7B's value shapes for `image_size` against that model's prefill FLOPs (exact
    formula: 2 x parameters of every decoder layer x tokens + 4 x N^2 x hidden x layers for attention; the
    vision tower and the head excluded, i.e. the prefill is understated and the share overstated)."""
    from focuslib.core.config import preset
    from focuslib.core.relevance import object_relevance
    from torch.utils.flop_counter import FlopCounterMode

    a = REAL_ARCH[family]["text"]
    mllm = _layout_only(family)
    N = mllm.num_image_tokens(image_size) + 60
    D = a["hidden"] // a["heads"]
    layers = preset(family, "vstar").resolved_layers(a["layers"])
    vals = [torch.randn(a["kv"], N, D, device=device) if i in layers else None for i in range(a["layers"])]
    target = torch.tensor([N - 8, N - 7], device=device)
    vis = torch.arange(10, N - 60, device=device)
    with FlopCounterMode(display=False) as fc:
        object_relevance(vals, target, vis, layers)
    t0 = time.perf_counter()
    object_relevance(vals, target, vis, layers)
    t_map = time.perf_counter() - t0
    h, i, kv = a["hidden"], a["inter"], a["kv"] * D
    per_layer = 2 * (h * h * 2 + h * kv * 2 + 3 * h * i) * N + 4 * N * N * h
    prefill = per_layer * a["layers"]
    return dict(family=family, size=image_size, tokens=N, map_flops=int(fc.get_total_flops()), map_s=t_map,
                prefill_flops=prefill)


@functools.lru_cache(maxsize=None)
def _layout_only(family: str):
    """An adapter for token counts only (tiny weights, the real processor settings); built once per family."""
    import tempfile

    from focuslib.offline import tiny
    from focuslib.models import load_mllm
    build = {"llava-1.5": tiny.build_tiny_llava, "llava-onevision": tiny.build_tiny_onevision,
             "qwen2.5-vl": lambda p: tiny.build_tiny_qwen25vl(p, max_pixels=12845056)}[family]
    path = build(Path(tempfile.mkdtemp()) / family)
    kw = dict(max_pixels=12845056) if family == "qwen2.5-vl" else {}
    return load_mllm(str(path), device="cpu", dtype="float32", **kw)


# ---- the table ----------------------------------------------------------------------------------------------
def _f(v, fmt="{:.2f}"):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def table(rows: list[dict]) -> str:
    """Markdown table of `measure` rows (one model and image size per block), ratios to that block's vanilla."""
    head = ("| model | image | method | time [s] | x vanilla | targets | map+pass | verify/search | answer | "
            "search FPs | model calls | LLM forwards | tokens | x vanilla | TFLOPs | x vanilla | peak mem [GiB] | "
            "extra mem [GiB] | extra x vanilla |\n" + "| --- " * 19 + "|")
    out = [head]
    for r in rows:
        v = next((x for x in rows if x["kind"] == "vanilla" and x["model"] == r["model"] and x["image"] == r["image"]),
                 None)
        ratio = lambda k: (r[k] / v[k]) if v and r.get(k) is not None and v.get(k) else None   # noqa: E731
        s = r["steps"]
        out.append("| " + " | ".join([
            r["model"], r["image"], r["method"], _f(r["time_s"]), _f(ratio("time_s"), "{:.1f}x"),
            _f(s.get("targets")), _f(s.get("relevance", s.get("maps"))),
            _f(s.get("verify", s.get("search"))), _f(s.get("answer")),
            str(r["search_fp"]), str(r["model_calls"]), str(r["lm_forwards"]), str(r["tokens"]),
            _f(ratio("tokens"), "{:.1f}x"), _f(None if r["flops"] is None else r["flops"] / 1e12, "{:.3f}"),
            _f(ratio("flops"), "{:.1f}x"), _f(r["mem_total_gb"]), _f(r["mem_extra_gb"], "{:.3f}"),
            _f(ratio("mem_extra_gb"), "{:.2f}x")]) + " |")
    return "\n".join(out)


def environment(device: str, dtype, attn: str) -> str:
    import transformers
    dev = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.processor() or 'cpu'}"
    return (f"machine: {platform.node()} ({dev}, {torch.get_num_threads()} threads), dtype {dtype}, "
            f"attention {attn} (ViCrop: eager), torch {torch.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["llava-1.5"], choices=list(REAL_ARCH))
    ap.add_argument("--sizes", nargs="+", default=["2K"], choices=list(SIZES))
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the real depth)")
    ap.add_argument("--vision-layers", type=int, default=None, help="vision tower layers (default: the real depth)")
    ap.add_argument("--methods", nargs="+", default=["vanilla", "focus", "icl-cache", "zoomeye", "vicrop"],
                    help="vanilla focus icl-cache (FOCUS Steps-1 with the ICL prompt uncached) zoomeye vicrop")
    ap.add_argument("--n-steps", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--depths", nargs="+", type=int, default=[1, 2, 5])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--reps", type=int, default=1, help="runs per method, the last one reported")
    ap.add_argument("--skip-no-overrun", action="store_true", help="only the overrun variants of FOCUS")
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--icl-tokens", type=int, default=3, help="scripted length of the ICL continuation")
    ap.add_argument("--answer-tokens", type=int, default=2, help="scripted length of every final answer")
    ap.add_argument("--map-8k", nargs="*", default=None, help="families for the full-depth map share at 8K")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from focuslib.models import resolve_dtype
    dtype = resolve_dtype(a.dtype or "auto", a.device)
    rows, extra, rate = [], [], 0.0
    for fam in a.models:
        t0 = time.perf_counter()
        mllm = build_real(fam, a.layers, a.vision_layers, a.device, dtype, a.attn)
        info = mllm.bench_info
        label = f"{fam} ({info['text_layers']}/{info['full_text_layers']} LM, " \
                f"{info['vision_layers']}/{info['full_vision_layers']} vision layers)"
        print(f"built {label} in {time.perf_counter() - t0:.0f} s; tokenizer {info['tokenizer']}", flush=True)
        script_yes_no(mllm, base_side=_leaf(fam))
        script_lengths(mllm, a.icl_tokens, a.answer_tokens)
        for size in a.sizes:
            image, disc = make_image(SIZES[size])
            # first-call overheads out of the figures, and the ICL prefix cache warm as after two questions
            from focuslib.core.targets import icl_prompt
            for q in ("How many cars are there?", "Is the lamp on the left of the bus?"):
                mllm.generate_text(icl_prompt(q))
            runner(mllm, Method("warm-up", "vanilla", {}), disc)(image, QUESTION)
            for m in methods(a.n_steps, a.depths, a.methods, not a.skip_no_overrun):
                r = measure(mllm, m, image, disc, a.device, flops=not a.no_flops, reps=a.reps)
                r.update(model=label, image=f"{size} {SIZES[size][0]}x{SIZES[size][1]}")
                rows.append(r)
                print(table([x for x in rows if x["image"] == r["image"] and x["model"] == label]).splitlines()[-1],
                      flush=True)
            ms = map_share(mllm, image)
            rate = max(rate, ms["pass_flops"] / ms["pass_s"])
            extra.append(f"- {label}, {size}: relevance pass {ms['seq_len']} tokens {ms['pass_s']:.2f} s / "
                         f"{ms['pass_flops'] / 1e12:.3f} TFLOPs; map {ms['map_s'] * 1e3:.1f} ms / "
                         f"{ms['map_flops'] / 1e9:.3f} GFLOPs = {100 * ms['map_s'] / ms['pass_s']:.2f}% of the pass's "
                         f"time, {100 * ms['map_flops'] / ms['pass_flops']:.3f}% of its FLOPs")
            print(extra[-1], flush=True)
            lm = logits_memory(mllm, image, a.device)
            extra.append(f"- {label}, {size}: relevance forward peak above start with logits for every position "
                         f"{lm['all']:.3f} GiB, last position only {lm['last']:.3f} GiB")
            print(extra[-1], flush=True)
        del mllm
    q8 = _layout_only("qwen2.5-vl").num_image_tokens(SIZES["8K"]) if a.map_8k else 0
    if q8:
        extra.append(f"- Qwen2.5-VL at 8K: {q8} image tokens; logits for every position would be {q8} x 152064 x 2 B = "
                     f"{q8 * 152064 * 2 / 2**30:.1f} GiB in bf16 ({q8 * 152064 * 4 / 2**30:.1f} GiB in fp32) for the two "
                     f"numbers the pass reads")
    for fam in (a.map_8k or []):
        r = map_share_full_depth(fam, SIZES["8K"], a.device)
        line = (f"- {fam} at FULL depth, 8K image ({r['tokens']} tokens): map {r['map_flops'] / 1e9:.2f} GFLOPs "
                f"({r['map_s'] * 1e3:.0f} ms on {a.device}) vs prefill >= {r['prefill_flops'] / 1e12:.1f} TFLOPs: "
                f"{100 * r['map_flops'] / r['prefill_flops']:.4f}% of the FLOPs")
        if rate:
            est = r["prefill_flops"] / rate
            line += (f"; at this machine's measured rate ({rate / 1e9:.0f} GFLOP/s in the relevance passes above) "
                     f"that prefill takes >= {est:.0f} s, the map {100 * r['map_s'] / est:.3f}% of it")
        extra.append(line)
        print(extra[-1], flush=True)
    cmd = "python benchmarks/bench_methods.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# Cost per question: vanilla, FOCUS, ZoomEye, ViCrop\n\n`{cmd}`\n\n{environment(a.device, dtype, a.attn)}"
            f"\n\nRandom weights at the real widths; decisions scripted by a planted target (see the script's "
            f"docstring). Time in seconds per question (steps: targets = ICL extraction, map+pass = relevance "
            f"forward + map, verify/search = FOCUS's batched verification or ZoomEye's tree search, answer = final "
            f"generation); ratios to vanilla measured in the same run; extra mem = peak above the loaded model.\n\n"
            + table(rows) + "\n\n## The map against its forward pass\n\n" + "\n".join(extra) + "\n")
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}")
    return 0


def _leaf(family: str) -> int:
    from focuslib.eval.baselines.zoomeye import ZOOMEYE_PRESETS
    return int(ZOOMEYE_PRESETS[family]["min_patch"])


if __name__ == "__main__":
    raise SystemExit(main())
