import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def _build(tmp_path_factory, builder: str, name: str):
    from focuslib import tiny
    return getattr(tiny, builder)(tmp_path_factory.mktemp("models") / name, seed=0)


def _load(path):
    from focuslib.models import load_mllm
    return load_mllm(str(path), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory):
    return _build(tmp_path_factory, "build_tiny_llava", "tiny-llava")


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_path):
    return _load(tiny_llava_path)


@pytest.fixture(scope="session")
def tiny_ov_path(tmp_path_factory):
    return _build(tmp_path_factory, "build_tiny_onevision", "tiny-ov")


@pytest.fixture(scope="session")
def tiny_ov(tiny_ov_path):
    return _load(tiny_ov_path)


@pytest.fixture(scope="session")
def tiny_qwen_path(tmp_path_factory):
    return _build(tmp_path_factory, "build_tiny_qwen25vl", "tiny-qwen")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_qwen_path):
    return _load(tiny_qwen_path)
