import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def _build(tmp_path_factory, builder: str, name: str):
    from focuslib.offline import tiny
    return getattr(tiny, builder)(tmp_path_factory.mktemp("models") / name, seed=0)


def _load(path):
    from focuslib.models import load_mllm
    return load_mllm(str(path), device="cpu", dtype="float32")


# Every model test runs on the tiny checkpoints AND on the mini-real ones (issue 13: the hub checkpoints' real
# tokenizers, ids, processor files and config fields at tiny widths, focuslib.offline.mini_real). FOCUS_TEST_FLAVOURS
# ("tiny", "mini-real" or both, comma-separated) narrows it for a quick local run.
FLAVOURS = [f for f in os.environ.get("FOCUS_TEST_FLAVOURS", "tiny,mini-real").split(",") if f]


def _mini(tmp_path_factory, family: str):
    from focuslib.offline.mini_real import build_mini_real
    return build_mini_real(family, tmp_path_factory.mktemp("mini-real") / family, seed=0)


def _flavour(request, tiny_path_fixture: str, family: str):
    if request.param == "tiny":
        return _load(request.getfixturevalue(tiny_path_fixture))
    return _load(request.getfixturevalue({"llava-1.5": "mini_llava_path", "llava-onevision": "mini_ov_path",
                                          "qwen2.5-vl": "mini_qwen_path"}[family]))


@pytest.fixture(scope="session")
def mini_llava_path(tmp_path_factory):
    return _mini(tmp_path_factory, "llava-1.5")


@pytest.fixture(scope="session")
def mini_ov_path(tmp_path_factory):
    return _mini(tmp_path_factory, "llava-onevision")


@pytest.fixture(scope="session")
def mini_qwen_path(tmp_path_factory):
    return _mini(tmp_path_factory, "qwen2.5-vl")


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory):
    return _build(tmp_path_factory, "build_tiny_llava", "tiny-llava")


@pytest.fixture(scope="session", params=FLAVOURS)
def tiny_llava(request):
    """The llava-1.5 adapter on the tiny checkpoint, then on the mini-real one."""
    return _flavour(request, "tiny_llava_path", "llava-1.5")


@pytest.fixture(scope="session")
def tiny_ov_path(tmp_path_factory):
    return _build(tmp_path_factory, "build_tiny_onevision", "tiny-ov")


@pytest.fixture(scope="session", params=FLAVOURS)
def tiny_ov(request):
    """The llava-onevision adapter on the tiny checkpoint, then on the mini-real one."""
    return _flavour(request, "tiny_ov_path", "llava-onevision")


@pytest.fixture(scope="session")
def tiny_qwen_path(tmp_path_factory):
    return _build(tmp_path_factory, "build_tiny_qwen25vl", "tiny-qwen")


@pytest.fixture(scope="session", params=FLAVOURS)
def tiny_qwen(request):
    """The qwen2.5-vl adapter on the tiny checkpoint, then on the mini-real one."""
    return _flavour(request, "tiny_qwen_path", "qwen2.5-vl")
