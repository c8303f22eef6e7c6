"""The miniature's world, batches and training loop (focuslib.offline.miniature); no training beyond a few micro steps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from focuslib.offline import miniature as M
from focuslib.offline import synthetic


@pytest.fixture(scope="module")
def processor():
    return M.build_processor()


def test_seen_objects_follow_pad_to_square_and_resize():
    o = M.Obj("circle", "red", (100, 50, 20, 20))
    # a 200 x 100 window: padded to 200 x 200 (50 px on top), resized to 96 -> factor 0.48
    (s,) = M.seen_objects([o], (50, 0, 250, 100))
    assert s.frac == 1.0
    assert s.box == pytest.approx((50 * 0.48, 100 * 0.48, 70 * 0.48, 120 * 0.48))
    # half outside on the left
    (s,) = M.seen_objects([o], (110, 0, 310, 200))
    assert s.frac == pytest.approx(0.5)
    assert M.seen_objects([o], (300, 300, 400, 400)) == []


def test_existence_labels_agree_with_geometry():
    """Over many random views: 'Yes' => a matching object at least half inside; 'No' => none in view at all."""
    r = M.Recipe()
    rng = np.random.default_rng(0)
    kinds = {"Yes": 0, "No": 0}
    for _ in range(60):
        _, objs = M.make_scene(rng, r, render=False)
        for _ in range(4):
            seen = M.seen_objects(objs, M.sample_window(rng, r, objs))
            qa = M.existence_question(rng, seen)
            if qa is None:
                continue
            q, a = qa
            name = q[len("Is there a "):-len(" in the image?")].split()
            color, shape = (name if len(name) == 2 else (None, name[0]))
            match = [s for s in seen if s.obj.shape == shape and color in (None, s.obj.color)]
            kinds[a] += 1
            if a == "Yes":
                assert any(s.frac >= 0.5 for s in match), (q, seen)
            else:
                assert not match, (q, seen)
    assert kinds["Yes"] > 40 and kinds["No"] > 40


def test_caption_is_raster_order_and_skips_cut_objects():
    objs = [M.Obj("star", "blue", (700, 10, 40, 40)), M.Obj("circle", "red", (10, 10, 40, 40)),
            M.Obj("cross", "green", (10, 500, 40, 40)), M.Obj("square", "white", (790, 300, 40, 40))]
    seen = M.seen_objects(objs, (0, 0, 800, 600))
    assert M.caption(seen) == "red circle , blue star , green cross"   # the square is 1/4 inside
    assert M.caption([]) == "nothing"


def test_word_scene_covers_the_object_area():
    o = M.Obj("circle", "red", (0, 0, 80, 80))
    (s,) = M.seen_objects([o], (0, 0, 800, 800))       # 80 px -> 9.6 px in the 96 px input
    cells = M.word_scene([s])
    assert sum(f for *_, f in cells) * M.PATCH ** 2 == pytest.approx(9.6 ** 2)
    assert {k for k, *_ in cells} == {0, 1, M.GRID, M.GRID + 1}
    assert all(c == "red" and sh == "circle" and 0 < f <= 1 for _, c, sh, f in cells)


def test_tokenizer_knows_every_word_the_kit_sends(processor):
    from focuslib.core.targets import icl_prompt
    tok = processor.tokenizer
    items = synthetic.generate(6, seed=3)
    texts = [M.chat(it.text) for it in items] + [icl_prompt(it.question) for it in items]
    texts += [M.chat(M.EXISTENCE.format(target="purple diamond")), M.chat(M.CAPTION)]
    for t in texts:
        ids = tok(t)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.unk_token_id not in ids, [w for w, i in zip(tok.tokenize(t), ids[1:]) if i == tok.unk_token_id]
    assert tok.decode(tok("red circle ; blue star", add_special_tokens=False)["input_ids"]) == "red circle ; blue star"


@pytest.mark.parametrize("stage", M.STAGES)
def test_batches_are_deterministic_and_supervise_answers_only(stage, processor):
    r = M.Recipe(batch={"V": 4, "T": 4, "A": 4, "I": 4})
    a, b, c = (M.make_batch(r, stage, s, processor) for s in (5, 5, 6))
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k
    key = "pixel_values" if stage != "T" else "input_ids"
    assert not torch.equal(a[key], c[key])
    if stage == "V":
        assert a["y"].shape == a["mask"].shape == (4, M.N_CLASSES)
        return
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    for ids, lab in zip(a["input_ids"], a["labels"]):
        assert int((ids == image_id).sum()) == M.GRID * M.GRID
        sup = lab[lab != -100]
        assert sup[-1] == tok.eos_token_id and image_id not in sup
        # supervised tokens are exactly the tail after "ASSISTANT :"
        n = len(sup)
        real = ids[ids != tok.pad_token_id]
        assert torch.equal(real[-n:], sup)
        assert tok.convert_ids_to_tokens(real[-n - 1:-n].tolist()) == [":"]


def test_icl_batches_teach_the_target_format(processor):
    from focuslib.core.targets import parse_targets
    r = M.Recipe(batch={"V": 4, "T": 8, "A": 4, "I": 8})
    b = M.make_batch(r, "T", M.ICL_EVERY - 1, processor)
    tok = processor.tokenizer
    for ids, lab in zip(b["input_ids"], b["labels"]):
        answer = tok.decode(lab[lab != -100], skip_special_tokens=True)
        spec = parse_targets(" " + answer)
        assert spec is not None and 1 <= len(spec.targets) <= 2
        assert all(t.split()[-1] in synthetic.SHAPES for t in spec.targets)
        assert tok.decode(ids, skip_special_tokens=True).rstrip().endswith(answer)


MICRO = dict(lm_hidden=32, lm_layers=2, lm_heads=2, vision_hidden=16, vision_layers=1,
             steps={"V": 2, "T": 3, "A": 2, "I": 3}, batch={"V": 3, "T": 3, "A": 3, "I": 3}, checkpoint_every=1)


def test_training_resumes_exactly_after_an_interruption(tmp_path, monkeypatch):
    """Kill the run in the middle of stage T; the resumed run ends with the same weights as an uninterrupted one."""
    r = M.Recipe(**MICRO)
    full = M.train(tmp_path / "full", r, workers=0, log=lambda *a: None)

    calls = {"n": 0}
    real = M._loss

    def dying(model, stage, *a, **k):
        if stage == "T":
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return real(model, stage, *a, **k)

    monkeypatch.setattr(M, "_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        M.train(tmp_path / "cut", r, workers=0, log=lambda *a: None)
    assert (tmp_path / "cut" / "stage-T.partial.pt").exists() and not (tmp_path / "cut" / "stage-T.pt").exists()
    monkeypatch.setattr(M, "_loss", real)
    resumed = M.train(tmp_path / "cut", r, workers=0, log=lambda *a: None)

    from safetensors.torch import load_file
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_saved_miniature_loads_through_the_llava_adapter(tmp_path):
    from focuslib.models import load_mllm
    r = M.Recipe(**{**MICRO, "steps": {"V": 1, "T": 1, "A": 1, "I": 1}})
    path = M.train(tmp_path / "run", r, workers=0, log=lambda *a: None)
    m = load_mllm(str(path), device="cpu")
    assert m.family == "llava-1.5" and m.grid == M.GRID and m.model.dtype == torch.float32
    assert m.answer_token_id("Yes") != m.answer_token_id("No")
    img = synthetic.generate(1)[0].image
    rp = m.relevance_pass(img, "star")
    assert rp.layout.positions.shape == (M.GRID, M.GRID) and len(rp.values) == MICRO["lm_layers"]
    assert rp.target_tokens == ["star"]


# ---- the shipped miniature (data/models/miniature-llava-1.5), the embedded default ------------------

from focuslib.offline.embedded import SHIPPED_MINIATURE, embedded_default  # noqa: E402

shipped = pytest.mark.skipif(not (SHIPPED_MINIATURE / "config.json").exists(), reason="no miniature shipped")


@shipped
def test_shipped_miniature_is_the_embedded_default_and_says_what_it_is():
    path, warning = embedded_default()
    assert Path(path) == SHIPPED_MINIATURE and warning is None
    meta = json.loads((SHIPPED_MINIATURE / "focuslib.json").read_text())
    assert meta["trained"] is True and meta["random_weights"] is False
    card = (SHIPPED_MINIATURE / "README.md").read_text()
    rep = json.loads((SHIPPED_MINIATURE / "report.json").read_text())
    # the card carries the measured numbers and the verdict computed from them
    assert "Goals of issue 16" in card and str(rep["accuracy"]["vanilla"]["direct_attributes"]) in card
    assert meta["recipe_name"] == "attempt-3" and "miniature3.py" in card
    assert sum(p.stat().st_size for p in SHIPPED_MINIATURE.iterdir()) < 20e6


@shipped
def test_shipped_miniature_answers_in_the_benchmark_formats():
    """A random-weight model emits arbitrary tokens; the trained one answers with an option letter and Yes/No."""
    from focuslib.offline import synthetic
    from focuslib.models import load_mllm
    mllm = load_mllm(str(SHIPPED_MINIATURE))
    assert mllm.grid == 12 and mllm.num_layers == 6
    items = synthetic.generate(6, seed=1000)
    for it in items:
        ans = mllm.generate([it.image], it.text).strip()
        assert ans in synthetic.LETTERS[:len(it.options)], (it.text, ans)
        yn = mllm.generate([it.image], f"Is there a {it.target_objects[0]} in the image?").strip()
        assert yn in ("Yes", "No"), yn


def test_recipe_noise_reaches_the_scene():
    """Recipe.noise picks the training scenes' pixel noise; the default draws the scenes runs 1-19 trained on."""
    from dataclasses import replace
    r = M.Recipe()
    img, objs = M.make_scene(np.random.default_rng(4), r)
    ref = synthetic._background(np.random.default_rng(4), r.scene_size)   # the scene's first draws, by hand
    assert img.size == ref.size
    fast, _ = M.make_scene(np.random.default_rng(4), replace(r, noise="bytes"))
    assert r.noise == "normal" and not np.array_equal(np.asarray(img), np.asarray(fast))
    # outside the objects' boxes every pixel is the reference background's
    outside = np.ones(ref.size[::-1], dtype=bool)
    for o in objs:
        x, y, w, h = o.box
        outside[max(0, y - 1):y + h + 1, max(0, x - 1):x + w + 1] = False
    assert objs and outside.mean() > 0.8
    assert np.array_equal(np.asarray(img)[outside], np.asarray(ref)[outside])
