"""Issue 13: mini-real checkpoints (real tokenizers, ids, processor files and config fields at tiny widths) and
the first-run failures a real checkpoint would hit. The whole suite's adapter / layout / FOCUS / ZoomEye / ViCrop
tests also run on these checkpoints (conftest parametrizes tiny_llava, tiny_ov, tiny_qwen)."""
import json
import shutil
import time

import pytest
import torch
from PIL import Image

from focuslib.offline import mini_real
from focuslib.eval.benchmarks import BenchmarkError, get_spec, load_benchmark
from focuslib.core.config import SYSTEM_LINES, VICUNA_V1_SYSTEM
from focuslib.models import load_mllm, resolve_source

PATHS = {"llava-1.5": "mini_llava_path", "llava-onevision": "mini_ov_path", "qwen2.5-vl": "mini_qwen_path"}


@pytest.fixture(scope="module", params=list(PATHS))
def mini(request):
    path = request.getfixturevalue(PATHS[request.param])
    return request.param, path, load_mllm(str(path), device="cpu", dtype="float32")


def _noise(w, h, seed=0):
    import numpy as np
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


# ---- the checkpoint is the hub's in everything but widths, depths and weights ------------------------------------
HUB_FILES = {"config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
             "chat_template.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}


def test_hub_file_layout_and_real_config_fields(mini):
    family, path, m = mini
    real = mini_real.REAL[family]
    names = {p.name for p in path.iterdir()}
    assert HUB_FILES <= names and "chat_template.jinja" not in names
    if family == "llava-1.5":
        assert "tokenizer.model" in names
    cfg = json.loads((path / "config.json").read_text())
    text = m.model.config.get_text_config()
    assert text.vocab_size == real["vocab_size"] and m.model.get_input_embeddings().weight.shape[0] == real["vocab_size"]
    assert m.image_token_id == real["image_token_id"]
    assert m.tokenizer.convert_ids_to_tokens(real["image_token_id"]) == real["image_token"]
    assert m.tokenizer.pad_token_id == real["pad_token_id"]
    assert cfg["dtype"] == "bfloat16"
    proc = json.loads((path / "processor_config.json").read_text())
    pre = json.loads((path / "preprocessor_config.json").read_text())
    if family == "llava-1.5":
        assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
        assert proc == {"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14,
                        "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default"}
        assert pre["crop_size"] == {"height": 336, "width": 336} and pre["size"] == {"shortest_edge": 336}
        assert (m.tokenizer.bos_token_id, m.tokenizer.eos_token_id) == (1, 2)
    elif family == "llava-onevision":
        assert cfg["vision_feature_layer"] == -1 and cfg["vision_feature_select_strategy"] == "full"
        assert cfg["vision_aspect_ratio"] == "anyres_max_9" and len(cfg["image_grid_pinpoints"]) == 36
        assert cfg["video_token_index"] == 151647 and proc["num_image_tokens"] == 729
        assert pre["image_mean"] == [0.5, 0.5, 0.5] and pre["do_pad"] is True
        assert text.num_attention_heads > text.num_key_value_heads          # GQA, as Qwen2-7B
    else:
        rope = cfg["text_config"]["rope_parameters"]
        assert rope["mrope_section"] == [16, 24, 24] and rope["rope_theta"] == 1e6
        assert text.hidden_size // text.num_attention_heads == 128            # the sections' head_dim
        assert (pre["min_pixels"], pre["max_pixels"]) == (3136, 12845056) and "size" not in pre
        assert [cfg[k] for k in ("vision_start_token_id", "vision_end_token_id", "video_token_id")] == [151652, 151653, 151656]
        gen = json.loads((path / "generation_config.json").read_text())
        assert gen["do_sample"] is True and gen["repetition_penalty"] == 1.05 and gen["eos_token_id"] == [151645, 151643]


def test_builds_are_deterministic(tmp_path, mini_llava_path):
    again = mini_real.build_mini_real("llava-1.5", tmp_path / "again", seed=0)
    for f in ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json",
              "chat_template.json", "generation_config.json"):
        assert (again / f).read_text() == (mini_llava_path / f).read_text(), f
    assert (again / "model.safetensors").read_bytes() == (mini_llava_path / "model.safetensors").read_bytes()


def test_chat_template_file_is_the_hubs(mini):
    family, path, m = mini
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    out = m.processor.apply_chat_template(msgs, add_generation_prompt=True)
    want = {"llava-1.5": "USER: <image>\nWhat is it? ASSISTANT:",
            "llava-onevision": "<|im_start|>user <image>\nWhat is it?<|im_end|><|im_start|>assistant\n",
            "qwen2.5-vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                          "<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n<|im_start|>assistant\n"}
    assert out == want[family]


# ---- real ids -----------------------------------------------------------------------------------------------------
def test_answer_token_ids_are_the_real_ones(mini):
    family, _, m = mini
    real = mini_real.REAL[family]
    assert (m.answer_token_id("Yes"), m.answer_token_id("No")) == (real["yes_id"], real["no_id"])
    assert (real["yes_id"], real["no_id"]) == ((3869, 1939) if family == "llava-1.5" else (9454, 2753))


PIECES = {  # the real vocabularies split these target names into several tokens (or not)
    "llava-1.5": {"fire hydrant": ["▁fire", "▁hyd", "rant"], "tissue box": ["▁t", "issue", "▁box"],
                  "bicycles": ["▁b", "icy", "cles"]},
    "qwen": {"fire hydrant": ["Ġfire", "Ġhydr", "ant"], "tissue box": ["Ġtissue", "Ġbox"],
             "bicycles": ["Ġbicycles"]},
}


@pytest.mark.parametrize("target", ["fire hydrant", "tissue box", "bicycles"])
def test_target_positions_in_the_real_vocabulary(mini, target):
    family, _, m = mini
    rp = m.relevance_pass(_noise(500, 300), target)
    assert rp.target_tokens == PIECES["llava-1.5" if family == "llava-1.5" else "qwen"][target]
    assert m.tokenizer.convert_tokens_to_string(rp.target_tokens).strip() == target
    # the positions are those tokens in the sequence, contiguous, after every visual token, right before " in"
    inputs = m.build_inputs([[_noise(500, 300)]], [m.prompt(f"Is there a {target} in the image?", 1)])
    ids = inputs["input_ids"][0]
    idx = rp.target_idx.cpu()
    assert m.tokenizer.convert_ids_to_tokens(ids[idx].tolist()) == rp.target_tokens
    assert torch.equal(idx, torch.arange(int(idx[0]), int(idx[0]) + len(idx)))
    assert int(idx.min()) > int(rp.layout.positions.max())
    assert m.tokenizer.convert_ids_to_tokens([int(ids[int(idx[-1]) + 1])]) in (["▁in"], ["Ġin"])


@pytest.mark.parametrize("size", [(336, 336), (1000, 300), (300, 1000), (1200, 1200)])
def test_image_token_count_matches_the_processor(mini, size):
    family, _, m = mini
    img = Image.new("RGB", size, (120, 80, 40))
    inputs = m.build_inputs([[img]], [m.prompt("x", 1)])
    n = int((inputs["input_ids"][0] == m.image_token_id).sum())
    lay = m.layout(img, inputs)
    if family == "llava-1.5":
        assert n == 576 == lay.positions.numel()
    elif family == "llava-onevision":
        assert n == m.num_image_tokens(size)
        with torch.no_grad():   # the model's own feature count agrees with the processor's expansion
            feats = m.model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                      image_sizes=inputs["image_sizes"],
                                                      vision_feature_layer=-1, vision_feature_select_strategy="full")
        got = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        assert sum(f.shape[0] for f in got) == n
    else:
        t, h, w = (int(v) for v in inputs["image_grid_thw"][0])
        assert n == t * h * w // 4 == m.num_image_tokens(size) == lay.positions.numel()


# ---- failure 2: an older llava-1.5 snapshot without num_additional_image_tokens ------------------------------
def test_old_llava_snapshot_without_num_additional_image_tokens(tmp_path, mini_llava_path):
    from transformers import AutoProcessor

    old = mini_real.drop_num_additional_image_tokens(shutil.copytree(mini_llava_path, tmp_path / "old"))
    assert "num_additional_image_tokens" not in json.loads((old / "processor_config.json").read_text())
    img = Image.new("RGB", (400, 300))
    stock = AutoProcessor.from_pretrained(str(old))            # what transformers alone does: 575 tokens
    n = int((stock(images=[img], text=["USER: <image>\nx ASSISTANT:"], return_tensors="pt")["input_ids"] == 32000).sum())
    assert n == 575
    with pytest.warns(UserWarning, match="num_additional_image_tokens=1"):
        m = load_mllm(str(old), device="cpu", dtype="float32")
    assert m.processor_fixes == ["num_additional_image_tokens=1"]
    rp = m.relevance_pass(img, "fire hydrant")                 # was "expected 576 image tokens, found 575"
    assert rp.layout.shape == (24, 24)
    assert m.existence_logits([img, img.crop((0, 0, 200, 150))], "dog").shape == (2, 2)


def test_current_snapshot_needs_no_fix(mini_llava_path):
    m = load_mllm(str(mini_llava_path), device="cpu", dtype="float32")
    assert m.processor_fixes == []


# ---- failure 1: download hints, local paths, failing fast offline ------------------------------------------------
def test_missing_local_path_gets_no_network_hint(tmp_path):
    for p in (str(tmp_path / "nowhere"), "./models/llava-1.5", "/data/ckpt/llava-1.5-7b-hf"):
        with pytest.raises(RuntimeError) as e:
            load_mllm(p, device="cpu")
        msg = str(e.value)
        assert "does not exist" in msg and p in msg
        assert "download" not in msg and "network" not in msg and "hub is not reachable" not in msg


def test_local_folder_without_config(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(RuntimeError, match="has no config.json"):
        load_mllm(str(tmp_path / "half"), device="cpu")


def test_offline_hub_id_fails_fast_with_one_hf_download_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as e:
        load_mllm("llava-1.5-7b", device="cpu")
    assert time.perf_counter() - t0 < 3.0
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "hf download llava-hf/llava-1.5-7b-hf --local-dir DIR" in msg
    assert "huggingface-cli" not in msg and msg.count("hf download") == 1


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    import socket
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def refuse(addr, timeout=None):     # a machine without network: connect fails at once
        raise OSError("Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("focuslib.models.cached_snapshot", lambda name: None)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as e:
        load_mllm("Qwen/Qwen2.5-VL-7B-Instruct", device="cpu")
    assert time.perf_counter() - t0 < 3.0
    assert "unreachable" in str(e.value) and "hf download Qwen/Qwen2.5-VL-7B-Instruct" in str(e.value)


def test_unreachable_hub_uses_the_cache(monkeypatch):
    import socket
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("down")))
    monkeypatch.setattr("focuslib.models.cached_snapshot", lambda name: "/cache/snap")
    assert resolve_source("llava-ov-7b") == ("llava-hf/llava-onevision-qwen2-7b-ov-hf", {"local_files_only": True})


# ---- failure 4: the system line is a per-family preset --------------------------------------------------------
def test_prompts_carry_the_familys_system_line(mini):
    family, _, m = mini
    p = m.prompt("Is there a dog in the image?", 1)
    if family == "llava-1.5":   # LLaVA's vicuna_v1 conversation, as lmms-eval and ZoomEye run LLaVA-1.5
        assert p == VICUNA_V1_SYSTEM + " USER: <image>\nIs there a dog in the image? ASSISTANT:"
    elif family == "llava-onevision":   # LLaVA's qwen_1_5 conversation
        assert p == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
                     "Is there a dog in the image?<|im_end|>\n<|im_start|>assistant\n")
    else:
        assert p.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert SYSTEM_LINES[m.family] in p


def test_system_line_override_and_trained_kit_checkpoints(tmp_path, tiny_llava_path):
    m = load_mllm(str(tiny_llava_path), device="cpu", dtype="float32", system="")
    assert m.prompt("Q?", 1) == "USER: <image>\nQ? ASSISTANT:"
    trained = shutil.copytree(tiny_llava_path, tmp_path / "trained")   # like the shipped miniature
    meta = json.loads((trained / "focuslib.json").read_text())
    (trained / "focuslib.json").write_text(json.dumps({**meta, "trained": True}))
    assert load_mllm(str(trained), device="cpu", dtype="float32").prompt("Q?", 1) == "USER: <image>\nQ? ASSISTANT:"
    (trained / "focuslib.json").write_text(json.dumps({**meta, "trained": True, "system": "Be brief."}))
    assert load_mllm(str(trained), device="cpu", dtype="float32").prompt("Q?", 0) == "Be brief. USER: Q? ASSISTANT:"


# ---- failure 5: GQA's two hub ids --------------------------------------------------------------------------------
def test_gqa_accepts_both_hub_ids(monkeypatch):
    spec = get_spec("gqa")
    assert get_spec("lmms-lab/GQA") is spec and get_spec("lmms-lab-encoder/GQA") is spec
    tried = []

    def fake_load(hub_id, config=None, split=None):
        tried.append(hub_id)
        raise FileNotFoundError(f"{hub_id} not found")
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(BenchmarkError) as e:
        load_benchmark("gqa")
    assert tried[:2] == ["lmms-lab/GQA", "lmms-lab-encoder/GQA"]
    assert "hf download lmms-lab/GQA --repo-type dataset" in str(e.value)
