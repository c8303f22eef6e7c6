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


TINY_LLAVA_NOTE = ("tiny LLaVA-1.5-shaped model with RANDOM weights (built offline by focuslib.tiny); "
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
        from . import targets as _targets
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
        resample=3, image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711])
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
