import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory):
    from focuslib.tiny import build_tiny_llava
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", seed=0)


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_path):
    from focuslib.models import load_mllm
    return load_mllm(str(tiny_llava_path), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_ov_path(tmp_path_factory):
    from focuslib.tiny import build_tiny_onevision
    return build_tiny_onevision(tmp_path_factory.mktemp("models") / "tiny-ov", seed=0)


@pytest.fixture(scope="session")
def tiny_ov(tiny_ov_path):
    from focuslib.models import load_mllm
    return load_mllm(str(tiny_ov_path), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_qwen_path(tmp_path_factory):
    from focuslib.tiny import build_tiny_qwen25vl
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("models") / "tiny-qwen", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen(tiny_qwen_path):
    from focuslib.models import load_mllm
    return load_mllm(str(tiny_qwen_path), device="cpu", dtype="float32")
