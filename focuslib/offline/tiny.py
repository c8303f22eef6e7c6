"""Tiny models with the REAL architectures and processors, built offline (no download).

`build_tiny_llava(path)` saves a LLaVA-1.5-shaped checkpoint: the real processor settings
(336 px, patch 14 -> 24 x 24 grid, CLIP mean/std, 576 image tokens per `<image>`), the real
model class (LlavaForConditionalGeneration with a CLIP vision tower and a Llama LM), tiny widths,
random weights, and a byte-level BPE tokenizer trained on a fixed corpus (any text tokenizes).
It loads through the same `load_mllm(path)` as a hub checkpoint. Its answers are noise.

The vision tower has one layer and, like LLaVA-1.5, reads layer -2 (= the patch embeddings), so
each visual token depends only on its own patch: the property the layout tests rely on.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from focuslib.core import targets as _targets
from focuslib.models import onevision, qwen


# CLIP's image normalisation (LLaVA-1.5's and Qwen2.5-VL's processors)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TINY_LLAVA_NOTE = ("tiny LLaVA-1.5-shaped model with RANDOM weights (built offline by focuslib.offline.tiny); "
                   "its answers and relevance maps are meaningless")

_WORDS = ("Yes No yes no USER ASSISTANT Is there a an the in image ? . , : ; ( ) A B C D E "
          "What is color of on left right side Answer with option's letter from given choices "
          "directly How many are Targets Question all red green blue yellow purple orange white "
          "black circle square triangle star cross diamond car dog cat person sign text").split()


def _corpus() -> list[str]:
    lines = [" ".join(_WORDS)] * 4
    lines += ["USER: <image>\nIs there a red circle in the image? ASSISTANT: Yes",
              "USER: <image>\nIs there a blue square in the image? ASSISTANT: No"] * 20
    try:
        lines.append(_targets.icl_prompt("What is the color of the car?"))
    except Exception:  # targets module optional at build time
        pass
    return lines


def build_tokenizer(vocab_size: int = 700):
    """Byte-level BPE (every string tokenizes) with LLaVA's special tokens, as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>",
                                   extra_special_tokens={"image_token": "<image>"})


def build_tiny_llava(path: str | Path, seed: int = 0, text_layers: int = 4, hidden: int = 64,
                     heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32) -> Path:
    """Save a tiny random-weight LLaVA-1.5 (real processor settings) at `path`; returns the path."""
    import transformers as T

    path = Path(path)
    tokenizer = build_tokenizer()
    image_processor = T.CLIPImageProcessor(  # llava-hf/llava-1.5-7b-hf preprocessor settings
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True,
        resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = T.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                 vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = T.CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                                num_hidden_layers=1, num_attention_heads=2, image_size=336,
                                patch_size=14, projection_dim=vision_hidden)
    text = T.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=text_layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    config = T.LlavaConfig(vision_config=vision, text_config=text,
                           image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                           vision_feature_layer=-2, vision_feature_select_strategy="default",
                           projector_hidden_act="gelu", pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = T.LlavaForConditionalGeneration(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "focuslib.json").write_text(json.dumps({"note": TINY_LLAVA_NOTE, "seed": seed,
                                                    "random_weights": True}, indent=1))
    return path


def model_note(path: str | Path) -> str | None:
    """The note a focuslib-built checkpoint carries (e.g. 'random weights'), or None."""
    f = Path(path) / "focuslib.json"
    return json.loads(f.read_text()).get("note") if f.exists() else None


# ---- global-local families (issue 3) ------------------------------------------------------------
# Same recipe as build_tiny_llava: real model classes and real processor settings, tiny widths, random
# weights, an offline byte-level BPE tokenizer with each family's special tokens. The vision towers keep
# features LOCAL (no vision attention layer at all), which the painting tests rely on.

TINY_OV_NOTE = ("tiny LLaVA-OneVision-shaped model with RANDOM weights (built offline by focuslib.offline.tiny); "
                "its answers and relevance maps are meaningless")
TINY_QWEN_NOTE = ("tiny Qwen2.5-VL-shaped model with RANDOM weights (built offline by focuslib.offline.tiny); "
                  "its answers and relevance maps are meaningless")

# llava-hf/llava-onevision-qwen2-7b-ov-hf: every (h, w) in multiples of 384 up to 6 x 6 tiles
OV_GRID_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]


def _build_family_tokenizer(specials: list[str], named: dict, corpus: list[str], vocab_size: int = 700):
    """Byte-level BPE like `build_tokenizer`, with a family's special tokens (`named`: role -> token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus() + corpus, trainer)
    std = {k: named.pop(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if k in named}
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=named, **std)


def _chatml_corpus(image: str) -> list[str]:
    return [f"<|im_start|>user\n{image}\nIs there a red circle in the image?<|im_end|>\n<|im_start|>assistant\nYes",
            f"<|im_start|>user\n{image}\nIs there a blue square in the image?<|im_end|>\n<|im_start|>assistant\nNo",
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"] * 20


def keep_vision_local(model):
    """Zero the vision tower's attention output so patches never mix: each visual token's feature depends
    on its own pixels only, which is what the painting tests of the layout rely on. Returns `model`."""
    with torch.no_grad():
        for layer in model.model.vision_tower.encoder.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
    return model


def _save_tiny(path: Path, model, processor, note: str, seed: int, extra: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    # the processor class is a video-free subclass (see models/onevision.py); record the stock name so
    # AutoProcessor also loads the checkpoint where torchvision is installed
    for f in path.glob("processor_config.json"):
        cfg = json.loads(f.read_text())
        cfg["processor_class"] = processor.__class__.__mro__[1].__name__
        f.write_text(json.dumps(cfg, indent=1))
    (path / "focuslib.json").write_text(json.dumps({"note": note, "seed": seed, "random_weights": True, **extra},
                                                   indent=1))
    return path


def build_tiny_onevision(path: str | Path, seed: int = 0, text_layers: int = 4, hidden: int = 64,
                         heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32) -> Path:
    """Save a tiny random-weight LLaVA-OneVision (real processor settings) at `path`.

    Real settings of llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP 384 px, patch 14 -> 27 x 27 = 729
    tokens per view, the 36 anyres pinpoints (1..6 x 1..6 tiles of 384), `anyres_max_9`, SigLIP mean/std
    0.5, bicubic, feature layer -1 with the "full" strategy, a Qwen2 LM, image_newline. The SigLIP tower
    has ONE encoder layer whose attention output projection is zero, so layer -1 = per-token LayerNorm/MLP
    of the patch + position embeddings: every visual token is local.
    """
    import transformers as T

    path = Path(path)
    named = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "image_token": "<image>",
             "video_token": "<video>"}
    tokenizer = _build_family_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                                        named, _chatml_corpus("<image>"))
    image_processor = T.LlavaOnevisionImageProcessor(
        size={"height": 384, "width": 384}, image_grid_pinpoints=OV_GRID_PINPOINTS, resample=3,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=True, do_convert_rgb=True)
    processor = onevision.processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                  num_image_tokens=729, vision_feature_select_strategy="full",
                                  vision_aspect_ratio="anyres_max_9")
    vision = T.SiglipVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                                  num_hidden_layers=1, num_attention_heads=2, image_size=384, patch_size=14,
                                  vision_use_head=False)
    text = T.Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=32768, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    config = T.LlavaOnevisionConfig(vision_config=vision, text_config=text,
                                    image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                    video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                                    vision_feature_layer=-1, vision_feature_select_strategy="full",
                                    image_grid_pinpoints=OV_GRID_PINPOINTS, vision_aspect_ratio="anyres_max_9",
                                    projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = keep_vision_local(T.LlavaOnevisionForConditionalGeneration(config).eval())
    return _save_tiny(path, model, processor, TINY_OV_NOTE, seed, {"family": "llava-onevision"})


def build_tiny_qwen25vl(path: str | Path, seed: int = 0, text_layers: int = 4, hidden: int = 64,
                        heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32,
                        min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 16384) -> Path:
    """Save a tiny random-weight Qwen2.5-VL (real processor settings) at `path`.

    Real settings of Qwen/Qwen2.5-VL-7B-Instruct: patch 14, temporal patch 2, spatial merge 2 (one LLM
    token per 28 x 28 resized pixels), smart_resize within [min_pixels, max_pixels] (defaults 3136 = 56*56
    and 12845056 = 28*28*16384, as the checkpoint's preprocessor_config.json), CLIP mean/std, bicubic,
    3-D mrope (sections scaled to the tiny head size). The vision tower has depth 0 (no windowed/full
    attention block): patch embedding -> 2x2 merger MLP, so each LLM visual token depends only on its own
    28 x 28 pixels.
    """
    import transformers as T

    path = Path(path)
    named = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "image_token": "<|image_pad|>",
             "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
             "vision_end_token": "<|vision_end|>"}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _build_family_tokenizer(specials, named,
                                        _chatml_corpus("<|vision_start|><|image_pad|><|vision_end|>"))
    image_processor = T.Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2,
        resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = qwen.processor_class()(image_processor=image_processor, tokenizer=tokenizer)
    head_dim = hidden // heads
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]   # real [16, 24, 24] for head_dim 128
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in
           [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    config = T.Qwen2_5_VLConfig(
        vision_config=dict(depth=0, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
                           out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=[]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=32768, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": mrope}),
        **ids)
    torch.manual_seed(seed)
    model = T.Qwen2_5_VLForConditionalGeneration(config).eval()
    return _save_tiny(path, model, processor, TINY_QWEN_NOTE, seed, {"family": "qwen2.5-vl"})
