"""The written contracts (docs/architecture.md), checked over the registry as timm checks every model of
`list_models()`: each registered family loads through load_mllm into its own adapter and keeps the adapter
contract, and every solver (vanilla, FOCUS, ZoomEye, ViCrop rel / grad) answers on each family with a Trace
that keeps the Solver contract the runner relies on. A new family or solver is covered by registering it."""
import json
from collections import Counter

import pytest
import torch
from PIL import Image

from focuslib.core.config import INPUTS, preset, PRESETS, SYSTEM_LINES
from focuslib.core.trace import Trace
from focuslib.eval.baselines.vicrop import VICROP_PRESETS
from focuslib.eval.baselines.zoomeye import ZOOMEYE_PRESETS
from focuslib.eval.solver import make_solver, Solver, SOLVER_METHODS
from focuslib.images import FocusInputError
from focuslib.models import load_mllm
from focuslib.models.base import calls_since, MLLM, TokenLayout
from focuslib.models.registry import FAMILIES, family_of_model_type, list_families
from focuslib.offline import mini_real
from focuslib.report.tables import FAMILY_TO_PAPER

# family -> the session fixture building its tiny checkpoint (tests/conftest.py)
TINY = {"llava-1.5": "tiny_llava_path", "llava-onevision": "tiny_ov_path", "qwen2.5-vl": "tiny_qwen_path"}
_loaded: dict[str, MLLM] = {}


def mllm_of(family: str, request) -> MLLM:
    """The family's tiny checkpoint, loaded once, with eager attention (ViCrop reads attention weights)."""
    if family not in _loaded:
        path = request.getfixturevalue(TINY[family])
        _loaded[family] = load_mllm(str(path), device="cpu", dtype="float32", attn_implementation="eager")
    return _loaded[family]


def scene() -> Image.Image:
    img = Image.new("RGB", (448, 336), (90, 90, 90))
    img.paste((220, 30, 30), (300, 60, 340, 100))
    return img


def test_every_registered_family_is_tested():
    assert list_families() == list(TINY)   # registering a family without a tiny checkpoint fails here
    for f in FAMILIES.values():
        assert f.adapter.family == f.key and family_of_model_type(f.model_type) is f


def test_one_family_key_drives_every_per_family_table():
    """Presets, inputs, chat formats, the baselines' presets and the offline builders are data keyed by the
    registry's family key: none may miss a registered family or keep a stale one; hub ids agree."""
    keys = set(list_families())
    for table in (PRESETS, INPUTS, SYSTEM_LINES, VICROP_PRESETS, ZOOMEYE_PRESETS, mini_real.REAL, mini_real.BUILDERS,
                  FAMILY_TO_PAPER):
        assert set(table) == keys
    assert set(mini_real.FAMILIES) == keys
    assert {k: r["hub_id"] for k, r in mini_real.REAL.items()} == {k: f.hub_id for k, f in FAMILIES.items()}


@pytest.mark.parametrize("family", list_families())
def test_adapter_contract(family, request):
    m = mllm_of(family, request)
    assert type(m) is FAMILIES[family].adapter and m.family == family
    img = scene()
    text = m.prompt("Is there a red square in the image? Answer yes or no.", 1)
    inputs = m.build_inputs([[img]], [text], offsets=True)
    assert "offset_mapping" in inputs and inputs["input_ids"].shape[0] == 1
    lay = m.layout(img, inputs)
    assert isinstance(lay, TokenLayout) and lay.cell_boxes.shape == (*lay.shape, 4)
    assert len(m.decoder_layers) == m.num_layers >= 1
    rp = m.relevance_pass(img, "red square", layers=[m.num_layers - 1])
    assert rp.values[m.num_layers - 1] is not None and rp.target_tokens
    before = Counter(m.calls)
    logits = m.ask_yes_no([img, img.crop((0, 0, 224, 224))], "Is there a red square?")
    assert logits.shape == (2, 2) and calls_since(m, before) == {"total": 0}   # no purpose: the caller counts
    counted = m.ask_yes_no([img, img.crop((0, 0, 224, 224))], "Is there a red square?", purpose="probe")
    assert torch.allclose(counted, logits, atol=1e-5) and calls_since(m, before) == {"probe": 2, "total": 2}
    if m.multi_image:   # several images in one prompt: one forward pass
        assert m.ask_views([img, img.crop((0, 0, 224, 224))], "Is the square red?", purpose="view").shape == (1, 2)
        assert calls_since(m, before) == {"probe": 2, "view": 1, "total": 3}
    assert isinstance(m.generate([img], "What color is the square?", max_new_tokens=2), str)


@pytest.mark.parametrize("method", SOLVER_METHODS)
@pytest.mark.parametrize("family", list_families())
def test_solver_contract(family, method, request):
    m = mllm_of(family, request)
    solver = make_solver(m, method, preset(family, "vstar", n_steps=2, max_new_tokens=2),
                         **({"depth": 1} if method == "zoomeye" else {}))
    assert isinstance(solver, Solver) and solver.mllm is m and solver.config.max_new_tokens == 2
    before = Counter(m.calls)
    tr = solver.answer(scene(), "What is the color of the square?", targets=["square"],
                       answer_prompt="What is the color of the square? Answer with one word.")
    assert isinstance(tr, Trace) and isinstance(tr.answer, str)
    assert tr.final_images and all(isinstance(im, Image.Image) for im in tr.final_images)
    assert tr.final_size == tr.final_images[0].size or tr.final_size == tr.final_images[-1].size
    assert tr.model_calls == calls_since(m, before)        # the trace accounts for every call it made
    assert (tr.search_fp == 0) == (method == "vanilla") and tr.search_fp <= tr.model_calls["total"]
    assert tr.timings["total"] >= max(v for k, v in tr.timings.items()) - 1e-9
    s = json.loads(json.dumps(tr.summary()))                 # the record's `trace`: JSON, no tensors
    assert s["answer"] == tr.answer and s["search_fp"] == tr.search_fp and isinstance(s["per_target"], list)
    for t in s["per_target"]:                                # what recall reads (metrics.examined_rois)
        assert all(len(r["box"]) == 4 for r in t["rois"])
    with pytest.raises(FocusInputError):
        solver.answer(scene(), "  ")
    assert not any(isinstance(v, torch.Tensor) for v in s.values())
