"""Attempt 3 of the miniature (focuslib.offline.miniature3): patch targets, curriculum items, gates, resume.

No real training: micro runs with a few steps check the loop's contracts (a missed gate stops the recipe and
stays stopped on a rerun; a passed one ships a model the LLaVA-1.5 adapter loads)."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from focuslib.offline import miniature as M
from focuslib.offline import miniature3 as M3
from focuslib.offline import synthetic


@pytest.fixture(scope="module")
def processor():
    return M3.build_processor()


def _seen(box, shape="star", color="red", scene=96):
    """One object at `box` (xywh) in a scene viewed whole at 96 px (factor 1 when scene = 96)."""
    return M.seen_objects([M.Obj(shape, color, box)], (0, 0, scene, scene))


def test_patch_targets_are_coverage_of_the_named_phrase_and_background_elsewhere():
    y = M3.patch_targets(_seen((0, 0, 16, 12)), shape_px=6.0)     # 2 x 1.5 cells of a 96 px view
    star = M3.PHRASES.index("red star")
    assert y.shape == (M.GRID * M.GRID, len(M3.PHRASES))
    assert torch.allclose(y.sum(-1), torch.ones(M.GRID * M.GRID))
    assert y[0, star] == 1 and y[1, star] == 1                     # fully covered cells
    assert y[M.GRID, star] == pytest.approx(0.5) and y[M.GRID, M3.BG] == pytest.approx(0.5)
    assert y[5, M3.BG] == 1 and y[:, star].sum() == pytest.approx(16 * 12 / 64)


def test_unresolvable_shapes_spread_over_their_colour():
    y = M3.patch_targets(_seen((1, 1, 4, 4), shape="cross", color="blue"), shape_px=6.0)   # 4 px < 6 px
    c = M.COLORS.index("blue")
    row = y[0]
    assert torch.allclose(row[c * 6:(c + 1) * 6], torch.full((6,), 16 / 64 / 6))
    assert row[M3.BG] == pytest.approx(1 - 16 / 64)
    assert row[:c * 6].sum() == 0 and row[(c + 1) * 6:M3.BG].sum() == 0


def test_phrase_table_is_the_sum_of_frozen_word_embeddings(processor):
    r = M3.Recipe3()
    model = M3.build_model(r, processor.tokenizer)
    E = model.get_input_embeddings().weight
    assert float(E.detach().std()) == pytest.approx(r.embed_std, rel=0.05)
    t = M3.phrase_table(model, processor.tokenizer)
    wid = processor.tokenizer.convert_tokens_to_ids
    assert torch.equal(t[M3.PHRASES.index("green diamond")], E[wid("green")] + E[wid("diamond")])
    assert torch.equal(t[M3.BG], E[wid("background")])
    groups = M3._groups(model, "I", r)
    assert not E.requires_grad and all(p is not E for g in groups for p in g["params"])
    proj = set(map(id, model.model.multi_modal_projector.parameters()))
    assert groups[1]["lr"] == pytest.approx(r.lr["I"] * r.tower_lr_scale)
    assert proj <= set(map(id, groups[1]["params"])) and not proj & set(map(id, groups[0]["params"]))
    assert len(M3._groups(model, "L", r)) == 1


def test_position_words_are_thirds_of_the_view():
    def at(cx, cy):
        return M3.position_words(M.Seen(M.Obj("star", "red", (0, 0, 1, 1)), 1.0, (cx - 1, cy - 1, cx + 1, cy + 1)))
    assert at(10, 10) == "top left" and at(90, 10) == "top right" and at(48, 48) == "middle"
    assert at(48, 90) == "bottom center" and at(10, 48) == "middle left"
    objs = [M.Obj("star", "red", (10, 10, 40, 40)), M.Obj("circle", "blue", (700, 700, 40, 40))]
    assert M3.position_caption(M.seen_objects(objs, (0, 0, 800, 800))) == "red star top left , blue circle bottom right"


def test_letter_curriculum_answers_point_at_the_stated_fact():
    rng = np.random.default_rng(0)
    prompts, answers, tasks = M3.make_l_items(rng, 200)
    assert {"letter", "color", "left/right"} == set(tasks)
    for p, a, t in zip(prompts, answers, tasks):
        options = dict(re.findall(r"\(([A-D])\) (\w+)", p))
        said = options[a.strip()]
        if t == "letter":
            assert p.startswith(f"USER: {said} .\n(A)")
        elif t == "color":
            shape = re.search(r"color of the (\w+)\?", p).group(1)
            assert f"the {shape} is {said} ." in p
        else:
            fact = re.search(r"the (\w+ \w+) is (left|right) of the (\w+ \w+) \.", p)
            a_, b_ = re.search(r"Is the (\w+ \w+) on the left or right side of the (\w+ \w+)\?", p).groups()
            flipped = {"left": "right", "right": "left"}[fact.group(2)]
            assert said == (fact.group(2) if (a_, b_) == (fact.group(1), fact.group(3)) else flipped)


def test_batches_are_deterministic(processor):
    r = replace(M3.Recipe3(), batch={"C": 4, "P": 4, "L": 4, "I": 4})
    for stage in M3.STAGES:
        a, b = M3.MAKERS[stage](r, 3, processor), M3.MAKERS[stage](r, 3, processor)
        for k in a:
            if torch.is_tensor(a[k]):
                assert torch.equal(a[k], b[k]), (stage, k)
    held = M3.make_i_batch(r, 3, processor, seed_offset=M.PROBE_SEED)
    assert not torch.equal(held["pixel_values"], M3.make_i_batch(r, 3, processor)["pixel_values"])


def test_copy_batches_supervise_exactly_the_repeat(processor):
    r = replace(M3.Recipe3(), batch={**M3.Recipe3().batch, "P": 3})
    b = M3.make_p_batch(r, 5, processor)
    ids, lab = b["input_ids"], b["labels"]
    n = (ids.shape[1] - 1) // 2
    assert torch.equal(ids[:, 1:n + 1], ids[:, n + 1:]) and (ids[:, 1:] >= 5).all()
    assert (lab[:, :n + 2] == -100).all() and torch.equal(lab[:, n + 2:], ids[:, n + 2:])


def test_tokenizer_knows_the_captions_and_the_kits_prompts(processor):
    tok = processor.tokenizer
    items = synthetic.generate(4, seed=3)
    texts = [M.chat(it.text) for it in items] + [M.chat(M.CAPTION) + " red star top left , blue circle middle"]
    texts += M3.make_l_items(np.random.default_rng(1), 20)[0]
    for t in texts:
        assert tok.unk_token_id not in tok(t)["input_ids"], t


def _micro(**kw):
    r = M3.Recipe3()
    return replace(r, steps={"C": 3, "P": 3, "L": 3, "I": 3}, min_steps={"C": 1, "P": 1, "L": 1, "I": 1},
                   batch={"C": 4, "P": 4, "L": 4, "I": 4}, probe_every=2, checkpoint_every=1, easy_steps=1, **kw)


def test_a_missed_gate_stops_the_recipe_and_stays_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(M3, "probe_c", lambda *a, **k: {"patch colour": 10.0, "patch phrase": 5.0})
    r = _micro(gates={"C": {"patch colour": 90.0}, "P": {}, "L": {}, "I": {}})
    res = M3.train(tmp_path, r, workers=0, log=lambda *_: None)
    assert not res["passed"] and res["failed_stage"] == "C" and res["final"] is None
    assert not (tmp_path / "stage-L.pt").exists()
    gate_rows = [h for h in res["history"] if "gate" in h]
    assert gate_rows and not any(h["gate"] for h in gate_rows)
    again = M3.train(tmp_path, r, workers=0, log=lambda *_: None)   # a rerun does not spend the budget again
    assert again["failed_stage"] == "C" and not (tmp_path / "stage-L.pt").exists()


def test_a_passed_recipe_ships_a_model_the_llava_adapter_loads(tmp_path):
    from focuslib.models import load_mllm
    r = _micro(gates={"C": {}, "P": {}, "L": {}, "I": {}})
    res = M3.train(tmp_path, r, workers=0, log=lambda *_: None)
    assert res["passed"]
    meta = json.loads((res["final"] / "focuslib.json").read_text())
    assert meta["system"] == "" and meta["recipe_name"] == "attempt-3" and meta["trained"]
    stages = [h["stage"] for h in meta["history"] if "seconds" in h]
    assert stages == ["C", "P", "L", "I"]
    mllm = load_mllm(str(res["final"]), device="cpu", dtype="float32")
    assert mllm.family == "llava-1.5" and mllm.grid == M.GRID
    out = mllm.existence_logits([synthetic.generate(1, seed=5)[0].image], "red star")
    assert out.shape[-1] == 2 and torch.isfinite(out).all()


def test_kept_checkpoints_are_the_weights_at_their_step(tmp_path):
    """`--keep-checkpoints` leaves stage-X.step-N.pt per checkpoint (a trajectory); without it only stage-X.pt."""
    r = replace(_micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), probe_every=3)
    M3.train(tmp_path / "plain", r, workers=0, log=lambda *_: None)
    assert not list((tmp_path / "plain").glob("*.step-*.pt"))
    M3.train(tmp_path / "kept", r, workers=0, log=lambda *_: None, keep_checkpoints=True)
    kept = sorted(p.name for p in (tmp_path / "kept").glob("*.step-*.pt"))
    # steps 1 and 2 of 3 are checkpointed (checkpoint_every=1); step 3 ends the stage as stage-X.pt
    assert kept == sorted(f"stage-{s}.step-{n}.pt" for s in "CPLI" for n in (1, 2))
    step2 = torch.load(tmp_path / "kept" / "stage-I.step-2.pt", weights_only=False)
    done = torch.load(tmp_path / "kept" / "stage-I.pt", weights_only=False)
    assert step2["step"] == 2
    name = next(k for k, v in done["model"].items() if v.is_floating_point() and "language_model" in k and "embed" not in k)
    assert not torch.equal(step2["model"][name], done["model"][name])   # one more step moved the LM
    plain = torch.load(tmp_path / "plain" / "stage-I.pt", weights_only=False)
    assert torch.equal(plain["model"][name], done["model"][name])        # keeping copies changes no weight


def test_a_missed_last_gate_still_saves_the_model_but_marks_it(tmp_path, monkeypatch):
    real = M3.probe_lm
    monkeypatch.setattr(M3, "probe_lm", lambda m, r, stage, proc, n=4: {"color": 10.0} if stage == "I"
                        else real(m, r, stage, proc, n=1))
    r = _micro(gates={"C": {}, "P": {}, "L": {}, "I": {"color": 85.0}})
    res = M3.train(tmp_path, r, workers=0, log=lambda *_: None)
    assert not res["passed"] and res["failed_stage"] == "I" and res["final"].exists()
    meta = json.loads((res["final"] / "focuslib.json").read_text())
    assert meta["gates_passed"] is False
    assert M3.main(["--out", str(tmp_path), "--scale", "0.001", "--ship", str(tmp_path / "shipped")]) == 3
    assert not (tmp_path / "shipped").exists()   # a model that missed a gate is never shipped


def test_existence_shares_choose_the_kind_of_question():
    r = M3.Recipe3()
    rng = np.random.default_rng(2)
    answers = {(1.0, 1.0): set(), (0.0, 1.0): set()}
    for _ in range(40):
        _, objs = M.make_scene(rng, r, render=False)
        seen = M.seen_objects(objs, M3.easy_window(rng, r, objs))
        if not any(s.frac >= 0.5 for s in seen):
            continue
        for shares in answers:
            qa = M.existence_question(rng, seen, shares)
            if qa:
                answers[shares].add(qa[1])
    assert answers[(1.0, 1.0)] == {"Yes"} and answers[(0.0, 1.0)] == {"No"}


def test_roi_windows_are_focus_crop_sized_and_hold_an_object_whole():
    r = M3.Recipe3()
    rng = np.random.default_rng(5)
    cell = max(r.scene_size) / M.GRID
    sides = {min(int(cell * k), min(r.scene_size)) for k in (3, 4, 5)}
    for _ in range(60):
        _, objs = M.make_scene(rng, r, render=False)
        x0, y0, x1, y1 = M3.roi_window(rng, r, objs)
        assert x1 - x0 == y1 - y0 and x1 - x0 in sides
        assert 0 <= x0 and 0 <= y0 and x1 <= r.scene_size[0] and y1 <= r.scene_size[1]
        assert any(x0 <= o.box[0] and o.box[0] + o.box[2] <= x1 and y0 <= o.box[1] and o.box[1] + o.box[3] <= y1
                   for o in objs)
        # at the processor's 96 px the objects of such a view are ~6-20 px: shape must be read there
        seen = [s for s in M.seen_objects(objs, (x0, y0, x1, y1)) if s.frac == 1.0]
        assert all(5 <= s.box[2] - s.box[0] <= 20 for s in seen)


def test_view_mix_shares_choose_the_stage_c_views(processor, monkeypatch):
    """c_easy / c_roi pick the view sampler."""
    calls = []
    for name in ("easy_window", "roi_window"):
        f = getattr(M3, name)
        monkeypatch.setattr(M3, name, lambda rng, r, objs, _f=f, _n=name: calls.append(_n) or _f(rng, r, objs))
    g = M.sample_window
    monkeypatch.setattr(M, "sample_window", lambda rng, r, objs: calls.append("general") or g(rng, r, objs))
    base = replace(M3.Recipe3(), batch={**M3.Recipe3().batch, "C": 8})
    for c_easy, c_roi, want in [(1.0, 0.0, {"easy_window"}), (0.0, 1.0, {"roi_window"}), (0.0, 0.0, {"general"})]:
        calls.clear()
        M3.make_c_batch(replace(base, c_easy=c_easy, c_roi=c_roi), 0, processor)
        assert set(calls) == want


def test_word_targets_say_present_absent_or_unknown():
    objs = [M.Obj("star", "red", (0, 0, 16, 16)),        # whole, resolvable: red and star present
            M.Obj("circle", "blue", (40, 40, 4, 4)),     # whole, too small: blue present, circle unknown
            M.Obj("cross", "green", (90, 0, 20, 20))]    # a fifth of it in view: green and cross unknown
    present, known = M3.word_targets(M.seen_objects(objs, (0, 0, 96, 96)), shape_px=6.0)
    w = {x: (bool(present[i]), bool(known[i])) for i, x in enumerate(M3.WORDS)}
    assert w["red"] == w["star"] == w["blue"] == (True, True)
    assert w["circle"] == w["green"] == w["cross"] == (False, False)
    absent = [x for x in M3.WORDS if x not in ("red", "star", "blue", "circle", "green", "cross")]
    assert absent and all(w[x] == (False, True) for x in absent)


def test_word_loss_is_bce_of_the_best_tokens_cosine_and_ignores_unknown_words():
    words = torch.eye(3, 4)                              # 3 words on orthogonal axes
    p = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 1.0, 0], [0, 0, 0, 1.0]]])   # [1, 3 tokens, 4]
    present = torch.tensor([[1.0, 0.0, 1.0]])
    known = torch.tensor([[1.0, 1.0, 0.0]])
    best = torch.tensor([1.0, 2 ** -0.5, 2 ** -0.5])     # word 0: token 0; words 1, 2: token 1
    ref = (_bce(torch.tensor(1.0), 1.0, 0.35, 0.1) + _bce(best[1], 0.0, 0.35, 0.1)) / 2
    assert M3.word_loss(p, present, known, words, 0.35, 0.1).item() == pytest.approx(ref.item(), rel=1e-5)
    p2 = p.clone()
    p2[0, 1] = torch.tensor([0, 0, 1.0, 0])               # word 1 no longer in any token: lower loss (it is absent)
    assert M3.word_loss(p2, present, known, words, 0.35, 0.1) < M3.word_loss(p, present, known, words, 0.35, 0.1)
    assert M3.word_loss(p, present, torch.zeros_like(known), words, 0.35, 0.1) == 0


def test_ground_targets_cover_every_object_of_each_resolvable_shape():
    objs = [M.Obj("star", "red", (0, 0, 16, 16)),        # whole, resolvable
            M.Obj("star", "blue", (48, 48, 4, 4)),       # too small alone, but a star: its cells count too
            M.Obj("circle", "green", (40, 0, 16, 16)),   # whole, resolvable
            M.Obj("cross", "green", (90, 0, 20, 20))]    # a fifth of it in view: no item of its own
    seen = M.seen_objects(objs, (0, 0, 96, 96))
    items = {M3.WORDS[k]: w for w, k in M3.ground_targets(seen, shape_px=6.0)}
    assert set(items) == {"star", "circle"}
    cells = lambda o: {k for k, _, _, f in M.word_scene([s for s in seen if s.obj is o]) if f > 0}  # noqa: E731
    assert set(items["star"].nonzero()[:, 0].tolist()) == cells(objs[0]) | cells(objs[1])
    assert set(items["circle"].nonzero()[:, 0].tolist()) == cells(objs[2])


def test_ground_loss_is_low_when_the_word_finds_its_object_and_not_its_neighbour():
    words = torch.eye(2, 4)                               # "star" on axis 0, "circle" on axis 1
    star, circle = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    bg = torch.tensor([0, 0, 1.0, 0])
    right = torch.stack([star, circle, bg])[None]       # [1 view, 3 tokens, 4]: token 0 is the star
    swapped = torch.stack([circle, star, bg])[None]     # the star's features on the circle's token
    ground = {"view": torch.tensor([0]), "word": torch.tensor([0]), "weights": torch.tensor([[1.0, 0, 0]])}
    lo, hi = M3.ground_loss(right, ground, words, 0.1), M3.ground_loss(swapped, ground, words, 0.1)
    # reference: softmax over the 3 tokens' cosines / tau, target token 0
    assert lo.item() == pytest.approx(-torch.log_softmax(torch.tensor([10.0, 0, 0]), 0)[0].item(), rel=1e-5)
    assert hi.item() == pytest.approx(-torch.log_softmax(torch.tensor([0, 10.0, 0]), 0)[0].item(), rel=1e-5)
    empty = {"view": torch.zeros(0, dtype=torch.long), "word": torch.zeros(0, dtype=torch.long),
             "weights": torch.zeros(0, 3)}
    assert M3.ground_loss(right, empty, words, 0.1).item() == 0


def _bce(best, y, margin, tau):
    z = (torch.as_tensor(best) - margin) / tau
    return -(y * torch.nn.functional.logsigmoid(z) + (1 - y) * torch.nn.functional.logsigmoid(-z))


def test_stage_c_adds_the_grounding_term_only_when_the_recipe_asks(tmp_path, monkeypatch):
    calls = []
    real = M3.ground_loss
    monkeypatch.setattr(M3, "ground_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(M3, "probe_c", lambda *a, **k: {})
    for c_ground, want in ((0.0, 0), (1.0, 3)):
        calls.clear()
        r = replace(_micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}, budget_s=1e9), c_ground=c_ground,
                    steps={"C": 6, "P": 3, "L": 3, "I": 3}, min_steps={"C": 6, "P": 1, "L": 1, "I": 1})
        _interrupted_train(monkeypatch, tmp_path / str(c_ground), r, at_step=3)   # cut in the 3rd C step
        assert len(calls) == want


def test_c_batches_carry_the_word_targets_of_their_views(processor):
    r = replace(M3.Recipe3(), batch={**M3.Recipe3().batch, "C": 6})
    b = M3.make_c_batch(r, 3, processor)
    assert b["words"]["present"].shape == b["words"]["known"].shape == (6, len(M3.WORDS))
    assert ((b["words"]["present"] == 1) <= (b["words"]["known"] == 1)).all()   # present implies known
    # the word targets draw nothing: the views (and so every earlier run) are the same draw for draw
    assert torch.equal(b["pixel_values"], M3.make_c_batch(r, 3, processor)["pixel_values"])


def test_roi_shape_probe_scores_an_oracle_tower_and_not_a_shape_blind_one(processor, monkeypatch):
    """Planted towers: patches = the phrase of what covers them reads shape at ROI scale; patches that carry
    only colour (the phrase averaged over the colour's 6 shapes) do not. 32 views a batch: enough views with
    two shapes in view for the grounding probe (~50 items)."""
    r = replace(M3.Recipe3(), batch={**M3.Recipe3().batch, "C": 32})
    model = M3.build_model(r, processor.tokenizer)
    table = M3.phrase_table(model, processor.tokenizer)
    last = {}
    make = M3.make_c_batch

    def recording(*a, **k):
        b = make(*a, **k)
        last["t"] = b["targets"]
        return b

    monkeypatch.setattr(M3, "make_c_batch", recording)
    monkeypatch.setattr(M3, "projected_patches", lambda m, pv: last["t"] @ table)
    oracle = M3.probe_c(model, r, processor, table, n=2)
    assert oracle["roi shape"] >= 90.0
    assert oracle["roi shape word"] >= 80.0 and oracle["mix shape word"] >= 80.0   # a shape word alone finds its object
    assert oracle["roi ground"] >= 80.0   # ... and on its own object when another shape is in view
    blind = table.clone()
    blind[:M3.BG] = table[:M3.BG].view(len(M.COLORS), len(M.SHAPES), -1).mean(1, keepdim=True).expand(
        -1, len(M.SHAPES), -1).reshape(M3.BG, -1)
    monkeypatch.setattr(M3, "projected_patches", lambda m, pv: last["t"] @ blind + 1e-3 * torch.randn(
        *last["t"].shape[:2], table.shape[1], generator=torch.Generator().manual_seed(0)))
    blind_acc = M3.probe_c(model, r, processor, table, n=2)
    assert blind_acc["roi shape"] <= 40.0   # chance 16.7
    assert blind_acc["roi shape word"] <= 60.0   # chance 50
    assert blind_acc["roi ground"] <= 60.0   # a token of an object, which object is a coin toss between two


def _interrupted_train(monkeypatch, out, r, at_step: int) -> None:
    """Run `train` until its `at_step`-th optimizer step (counted over all stages it runs), then Ctrl-C it."""
    real, calls = M.sgd_step, []

    def stop(*a, **k):
        calls.append(1)
        if len(calls) == at_step:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(M, "sgd_step", stop)
    with pytest.raises(KeyboardInterrupt):
        M3.train(out, r, workers=0, log=lambda *_: None)
    monkeypatch.setattr(M, "sgd_step", real)


def test_an_interrupted_stage_keeps_the_time_spent_before_it(tmp_path, monkeypatch):
    """A resumed stage's seconds (the card's and the 90-min budget's) include the run before the interruption."""
    class Clock:   # every reading advances 10 s
        t = 0.0

        def time(self):
            Clock.t += 10.0
            return Clock.t

    monkeypatch.setattr(M3, "time", Clock())
    monkeypatch.setattr(M3, "probe_c", lambda *a, **k: {})
    r = replace(_micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}, budget_s=1e9),
                steps={"C": 6, "P": 3, "L": 3, "I": 3}, min_steps={"C": 6, "P": 1, "L": 1, "I": 1})
    _interrupted_train(monkeypatch, tmp_path, r, at_step=4)
    before = torch.load(tmp_path / "stage-C.partial.pt", weights_only=False)["seconds"]
    assert before >= 30.0
    res = M3.train(tmp_path, r, workers=0, log=lambda *_: None)
    c = next(h for h in res["history"] if h["stage"] == "C" and "seconds" in h)
    assert c["steps_run"] == 6 and c["seconds"] > before


def test_colour_options_in_view_are_the_other_colours_in_view_and_default_draw_is_unchanged():
    view = [M.Obj("star", "red", (10, 10, 20, 20)), M.Obj("circle", "blue", (50, 10, 20, 20)),
            M.Obj("square", "green", (10, 50, 20, 20)), M.Obj("cross", "blue", (50, 50, 20, 20))]
    seen = M.seen_objects(view, (0, 0, 96, 96))
    for seed in range(20):
        qa = M.color_question(np.random.default_rng(seed), seen, view, options_in_view=True)
        q, letter = qa
        opts = dict(re.findall(r"\(([A-D])\) (\w+)", q))
        shape = re.search(r"of the (\w+)\?", q).group(1)
        right = next(o.color for o in view if o.shape == shape)
        assert opts[letter] == right and len(set(opts.values())) == 4
        # every other colour in view is an option; the rest are filled at random
        assert {"red", "blue", "green"} - {right} <= set(opts.values())
    # without the flag: the old draw, draw for draw (attempt 1 and stage L are reproducible)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    old = [c for c in b.permutation(M.COLORS) if c != "red"][:3]
    shown, _ = M.colour_options(a, "red")
    assert set(shown) == {"red", *old}
    a2, b2 = np.random.default_rng(9), np.random.default_rng(9)
    M.colour_options(a2, "red")
    b2.permutation(M.COLORS), b2.permutation(4)
    assert a2.random() == b2.random()


def test_recorded_variants_change_only_their_fields_and_reach_the_trainer(tmp_path, monkeypatch):
    base = M3.Recipe3()
    for name, fields in M3.VARIANTS.items():
        r = replace(base, **fields)   # a misspelt field would raise here
        changed = {k for k in M3.asdict(base) if M3.asdict(base)[k] != M3.asdict(r)[k]}
        assert changed == {k for k, v in fields.items() if M3.asdict(base)[k] != v}, name
    seen = {}

    def fake_train(out, r, **kw):
        seen["r"] = r
        return {"passed": False, "final": None, "failed_stage": "I"}

    monkeypatch.setattr(M3, "train", fake_train)
    assert M3.main(["--out", str(tmp_path), "--variant", "run-8"]) == 3
    assert seen["r"].options_in_view and seen["r"].tower_lr_scale == 0.0 and seen["r"].exist_shares == (0.4, 0.8)
    M3.main(["--out", str(tmp_path), "--variant", "run-9"])
    assert seen["r"].c_words == 1.0 and seen["r"].gates["C"]["roi shape word"] == 65.0
    assert M3.Recipe3().c_words == 0.0   # the defaults stay run 5
    with pytest.raises(SystemExit):
        M3.main(["--out", str(tmp_path), "--variant", "run-99"])


def test_make_miniature_trains_the_shipped_recipe():
    """`make miniature` (RECIPE=attempt-3) passes the run-17 variant, and the shipped model's recorded recipe is
    exactly Recipe3 with run 17's fields: the documented command reproduces the embedded default."""
    import shutil
    import subprocess
    from pathlib import Path

    from focuslib.offline.embedded import SHIPPED_MINIATURE
    meta = json.loads((SHIPPED_MINIATURE / "focuslib.json").read_text())
    want = json.loads(json.dumps(M3.asdict(replace(M3.Recipe3(), **M3.VARIANTS["run-17"]))))
    # a field added after the model was trained (i_ema) is absent from its record; its default is the old behaviour
    defaults = json.loads(json.dumps(M3.asdict(M3.Recipe3())))
    assert {k: meta["recipe"].get(k, defaults[k]) for k in want} == want
    if shutil.which("make"):
        root = Path(__file__).resolve().parents[1]
        cmd = subprocess.run(["make", "-n", "-s", "miniature", "STAMP=", "KERNEL="], cwd=root, capture_output=True,
                             text=True, check=True).stdout
        assert "--recipe attempt-3 --variant run-17 " in cmd and "--c-threads" not in cmd and "--device" not in cmd
        gpu = subprocess.run(["make", "-n", "-s", "miniature", "STAMP=", "KERNEL=", "DEVICE=cuda"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
        assert gpu.count("--device cuda") == 2   # the training and the report


def test_the_dispatcher_passes_the_device_to_attempt_3_only(monkeypatch):
    seen = []
    monkeypatch.setattr(M3, "main", lambda argv: seen.append(argv) or 0)
    assert M.main(["--recipe", "attempt-3", "--device", "cuda"]) == 0
    assert seen[-1][-2:] == ["--device", "cuda"]
    M.main(["--recipe", "attempt-3"])
    assert "--device" not in seen[-1]
    with pytest.raises(SystemExit):
        M.main(["--recipe", "attempt-1", "--device", "cuda"])


def test_shape_reading_items_are_balanced_and_their_answers_true(processor, monkeypatch):
    r = M3.Recipe3()
    for view in ("easy", "roi"):
        b = M3.shape_existence_batch(r, processor, view, n=24, seed=3)
        assert b["answers"] == ["Yes", "No"] * 12 and b["pixel_values"].shape[0] == 24
        for ans, (shape, whole, anywhere) in zip(b["answers"], b["views"]):
            assert (shape in whole) if ans == "Yes" else (shape not in anywhere)
        ids = b["input_ids"][b["labels"] != -100]
        assert set(processor.tokenizer.convert_ids_to_tokens(ids.tolist())) <= {"Yes", "No", "</s>"}
    # a model that answers Yes to everything (the run-5 failure) scores exactly chance; one that is always right 100
    model = torch.nn.Linear(1, 1)
    monkeypatch.setattr(M, "_inputs", lambda model, stage, b, tok: {})
    monkeypatch.setattr(M, "answer_hits", lambda model, inputs, labels, eos: [True, False] * (labels.shape[0] // 2))
    assert M3.probe_shape_reading(model, r, processor, batches=1) == {"easy": 50.0, "roi": 50.0}
    monkeypatch.setattr(M, "answer_hits", lambda model, inputs, labels, eos: [True] * labels.shape[0])
    assert M3.probe_shape_reading(model, r, processor, batches=1) == {"easy": 100.0, "roi": 100.0}


def test_weight_average_follows_its_formula_and_probes_see_it_without_moving_training():
    p = [torch.nn.Parameter(torch.tensor([1.0, 2.0]))]
    avg = [torch.zeros(2)]
    M3.ema_update(avg, p, decay=0.998, step=0)   # warm-up: d = 1 / 10
    assert torch.allclose(avg[0], torch.tensor([0.9, 1.8]))
    M3.ema_update(avg, p, decay=0.5, step=1000)  # past the warm-up the decay caps d
    assert torch.allclose(avg[0], torch.tensor([0.95, 1.9]))
    with M3.averaged(p, avg):
        assert torch.equal(p[0].detach(), avg[0])
    assert torch.equal(p[0].detach(), torch.tensor([1.0, 2.0]))   # training weights back after the probe
    with M3.averaged(p, None):
        assert torch.equal(p[0].detach(), torch.tensor([1.0, 2.0]))


def test_stage_i_with_a_weight_average_saves_the_average_and_resumes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(M3, "probe_c", lambda *a, **k: {})
    monkeypatch.setattr(M3, "probe_lm", lambda *a, **k: {})
    base = replace(_micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}, budget_s=1e9, tower_lr_scale=0.0),
                   steps={"C": 2, "P": 2, "L": 2, "I": 5}, min_steps={"C": 2, "P": 2, "L": 2, "I": 5})
    M3.train(tmp_path / "plain", base, workers=0, log=lambda *_: None)
    for stage in "CPL":   # both average runs start stage I from the same weights
        for d in ("avg", "cut"):
            (tmp_path / d).mkdir(exist_ok=True)
            (tmp_path / d / f"stage-{stage}.pt").write_bytes((tmp_path / "plain" / f"stage-{stage}.pt").read_bytes())
    r = replace(base, i_ema=0.9)
    M3.train(tmp_path / "avg", r, workers=0, log=lambda *_: None)
    _interrupted_train(monkeypatch, tmp_path / "cut", r, at_step=3)
    assert torch.load(tmp_path / "cut" / "stage-I.partial.pt", weights_only=False)["avg"] is not None
    M3.train(tmp_path / "cut", r, workers=0, log=lambda *_: None)
    plain, avg, cut = (torch.load(tmp_path / d / "stage-I.pt", weights_only=False)["model"] for d in ("plain", "avg", "cut"))
    lm = [k for k in plain if "language_model" in k and "embed_tokens" not in k]
    tower = [k for k in plain if "vision_tower" in k]
    assert all(torch.equal(avg[k], cut[k]) for k in plain)   # the interrupted run resumed its average exactly
    assert any(not torch.equal(avg[k], plain[k]) for k in lm)   # stage I saved the average, not the last step
    assert all(torch.equal(avg[k], plain[k]) for k in tower)   # frozen parts are untouched


def test_layer_map_benchmark_measures_a_stage_checkpoint_in_the_exported_architecture(tmp_path):
    """benchmarks/miniature_layer_maps.py: `final@stage-I.pt` is the exported model itself (same rows); an earlier
    stage's weights give other maps; one row per layer plus the preset layers the report's goals use."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "miniature_layer_maps", Path(__file__).resolve().parents[1] / "benchmarks" / "miniature_layer_maps.py")
    B = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(B)
    res = M3.train(tmp_path, _micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), workers=0, log=lambda *_: None)
    items = [i for i in synthetic.generate(60, seed=3) if i.category == "relative_position"][:4]
    final = B.layer_table(str(res["final"]), items)
    assert B.layer_table(str(res["final"]), items, str(tmp_path / "stage-I.pt")) == final
    earlier = B.layer_table(str(res["final"]), items, str(tmp_path / "stage-P.pt"))
    assert [r["top-norm cell (count)"] for r in earlier] != [r["top-norm cell (count)"] for r in final]
    n = len(final) - 1
    assert [r["layer"] for r in final[:n]] == list(range(n)) and final[-1]["layer"].startswith("preset ")
    assert all(0 <= r["hit@1 %"] <= 100 for r in final)


def test_map_probe_reads_the_training_model_as_the_report_reads_its_export(tmp_path):
    """probe_map wraps the model being trained in the kit's adapter with its own processor: on the same weights it
    gives what the report's code gives on the exported model, on probe scenes that are not the report's."""
    from focuslib.models import load_mllm
    from focuslib.offline import miniature_report as R
    res = M3.train(tmp_path, _micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), workers=0, log=lambda *_: None)
    items = M3.map_probe_items(3)
    assert [i.category for i in items] == ["direct_attributes"] * 3 + ["relative_position"] * 3
    held_out = synthetic.generate(6, seed=R.HELD_OUT_SEED)
    assert not any(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a in items for b in held_out)
    model = M3.build_model(M3.Recipe3(), M3.build_processor().tokenizer)
    model.load_state_dict(torch.load(tmp_path / "stage-I.pt", weights_only=False)["model"])
    model.train()
    got = M3.probe_map(model, 3)
    assert model.training   # the probe hands the model back as it found it
    assert got == R.preset_map_hits(load_mllm(str(res["final"]), device="cpu", dtype="float32"), items)
    assert set(got) == {"map shape", "map colour shape", "kk map shape", "kk map colour shape"}


def test_a_draw_below_the_map_floor_stops_and_one_above_runs_on(tmp_path, monkeypatch):
    """i_map_floor = (step, hit@1): stage I stops at its first probe from `step` on if the map by colour + shape is
    below the floor (history says "map lost"; the model is still saved, marked missed); checked once, also after a
    resume; a draw at or above it runs its steps."""
    calls = []

    def fake_probe(model, n):
        calls.append(n)
        return {"map colour shape": level}

    monkeypatch.setattr(M3, "probe_map", fake_probe)
    base = replace(_micro(gates={"C": {}, "P": {}, "L": {}, "I": {"never": 1.0}}, budget_s=1e9),
                   i_map_probe=5, i_map_floor=(4, 10.0))
    base = replace(base, steps={**base.steps, "I": 8}, min_steps={**base.min_steps, "I": 8})
    level = 5.0
    res = M3.train(tmp_path / "lost", base, workers=0, log=lambda *_: None)
    i_rows = [h for h in res["history"] if h.get("stage") == "I"]
    assert [h["step"] for h in i_rows if "probe" in h] == [2, 4] and calls == [5, 5]
    assert i_rows[1]["map lost"] and i_rows[-1]["steps_run"] == 4 and i_rows[-1]["map lost"]
    assert not res["passed"] and res["failed_stage"] == "I" and (res["final"] / "focuslib.json").exists()
    level = 10.0
    res = M3.train(tmp_path / "kept", base, workers=0, log=lambda *_: None)
    i_rows = [h for h in res["history"] if h.get("stage") == "I"]
    assert [h["step"] for h in i_rows if "probe" in h] == [2, 4, 6, 8]
    assert not any("map lost" in h for h in i_rows)
    # checked once: a probe after the floor's step that dips below it does not stop the draw
    assert not M3.map_lost({"map colour shape": 0.0}, 6, base, M3.floor_checked(res["history"], base))
    assert M3.map_lost({"map colour shape": 0.0}, 4, base, False)
    assert not M3.map_lost({"map colour shape": 0.0}, 2, base, False)
    assert not M3.map_lost({"map colour shape": 0.0}, 6, replace(base, i_map_floor=()), False)


def test_map_probe_benchmark_walks_kept_checkpoints_in_step_order(tmp_path):
    """benchmarks/miniature_map_probe.py: one row per kept stage-I checkpoint in step order, then the stage's end,
    each the map probe of those weights, next to the LM probes the run logged at that step."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "miniature_map_probe", Path(__file__).resolve().parents[1] / "benchmarks" / "miniature_map_probe.py")
    B = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(B)
    r = replace(_micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), probe_every=2)
    r = replace(r, steps={**r.steps, "I": 4}, min_steps={**r.min_steps, "I": 4})
    M3.train(tmp_path, r, workers=0, log=lambda *_: None, keep_checkpoints=True)
    rows = B.trajectory(tmp_path, n=2)
    assert [row["step"] for row in rows] == [1, 2, 3, "end"]
    model = M3.build_model(r, M3.build_processor().tokenizer)
    model.load_state_dict(torch.load(tmp_path / "stage-I.step-2.pt", weights_only=False)["model"])
    assert {k: rows[1][k] for k in B.COLS} == M3.probe_map(model, 2)
    logged = {h["step"]: h["probe"] for h in json.loads((tmp_path / "history.json").read_text())
              if h.get("stage") == "I" and "probe" in h}
    assert rows[1]["color"] == logged[2].get("color") and rows[0]["color"] is None   # step 1 was not probed
    assert rows[-1]["exists-yes"] == logged[4].get("exists-yes")


def test_input_side_changes_the_towers_pixels_not_the_worlds_geometry_or_the_token_grid(processor):
    """run 17's 192 px tower (16 px patches) reads the same 12 x 12 token grid: a stage-C batch at 192 px has the
    96 px batch's targets (the world's frame), and a shape is resolvable from shape_px input px, i.e. at half the
    frame size."""
    r96 = replace(M3.Recipe3(), **M3.VARIANTS["run-14"])
    r192 = replace(r96, input_side=192)
    b96 = M3.make_c_batch(r96, 5, processor)
    b192 = M3.make_c_batch(r192, 5, M3.build_processor(192))
    assert tuple(b96["pixel_values"].shape[-2:]) == (96, 96) and tuple(b192["pixel_values"].shape[-2:]) == (192, 192)
    assert M3.frame_px(r96) == 6.0 and M3.frame_px(r192) == 3.0
    small = _seen((10, 10, 4, 4), shape="cross", color="blue")   # 4 frame px: 4 input px at 96, 8 at 192
    k = M3.WORDS.index("cross")
    assert M3.word_targets(small, M3.frame_px(r96))[0][k] == 0 and M3.word_targets(small, M3.frame_px(r192))[0][k] == 1
    vc = M3.build_model(r192, processor.tokenizer).config.vision_config
    assert (vc.image_size, vc.patch_size) == (192, 16)
    # where objects are on the token grid does not depend on the pixels: the same background in every cell
    assert torch.allclose(b96["targets"][..., M3.BG], b192["targets"][..., M3.BG])
    reg96 = {(int(v), int(p)) for v, p in zip(b96["regions"]["view"], b96["regions"]["phrase"])}
    reg192 = {(int(v), int(p)) for v, p in zip(b192["regions"]["view"], b192["regions"]["phrase"])}
    assert reg96 <= reg192   # every region resolvable at 96 px is at 192 px (and small ones join)


def test_a_192_px_recipe_exports_a_model_the_adapter_reads_on_the_same_grid(tmp_path):
    from focuslib.models import load_mllm
    r = replace(_micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), input_side=192, i_map_probe=2)
    res = M3.train(tmp_path, r, workers=0, log=lambda *_: None)
    assert res["passed"]
    probes = [h["probe"] for h in res["history"] if h.get("stage") == "I" and "probe" in h]
    assert probes and all("map colour shape" in p for p in probes)   # the map probe read the 192 px model
    mllm = load_mllm(str(res["final"]), device="cpu", dtype="float32")
    assert (mllm.input_side, mllm.grid) == (192, M.GRID)
    image = synthetic.generate(1, seed=5)[0].image
    inputs = mllm.build_inputs([[image]], [mllm.prompt("Is there a star in the image?", 1)])
    assert tuple(inputs["pixel_values"].shape[-2:]) == (192, 192)
    lay = mllm.layout(image, inputs)
    assert lay.positions.shape == (M.GRID, M.GRID)
    assert float(lay.cell_boxes[0, 0, 2]) == pytest.approx(1600 / M.GRID)   # 133.3 px cells of the 1600 px image


def test_every_tensor_the_trainer_and_its_probes_feed_the_model_went_to_its_device(tmp_path, monkeypatch):
    """`--device cuda` (issue 16: train on a lent GPU with the same code) needs every batch -- training steps, the
    stage probes, the projector's rescale -- moved to the model's device. Without a GPU here, the device move is
    observed instead: `_to` marks what it moved, and the model's entry points refuse an unmarked tensor (before
    this test the probes fed CPU batches to the model, which a CUDA run would have died on at its first probe)."""
    moved = M3._to

    def marking_to(b, device):
        out = moved(b, device)
        for t in _tensors(out):
            t._on_device = True
        return out

    def _tensors(b):
        if torch.is_tensor(b):
            yield b
        elif isinstance(b, dict):
            for v in b.values():
                yield from _tensors(v)

    def check(name, tensors):
        stray = [k for k, t in tensors.items() if torch.is_tensor(t) and not getattr(t, "_on_device", False)]
        assert not stray, f"{name} was fed {stray} without the device move"

    built, seen = M3.build_model, []

    def build(r, tok):
        model = built(r, tok)

        def hook(mod, args, kw):
            seen.append("lm")
            check("the model", kw)

        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model

    patches = M3.projected_patches

    def projected(model, pixel_values):
        seen.append("tower")
        check("projected_patches", {"pixel_values": pixel_values})
        return patches(model, pixel_values)

    monkeypatch.setattr(M3, "_to", marking_to)
    monkeypatch.setattr(M3, "build_model", build)
    monkeypatch.setattr(M3, "projected_patches", projected)
    res = M3.train(tmp_path, _micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), workers=0, log=lambda *_: None)
    assert res["final"] is not None and {"lm", "tower"} <= set(seen)
    model = build(M3.Recipe3(), M3.build_processor().tokenizer)
    r = _micro()
    assert set(M3.probe_shape_reading(model, r, M3.build_processor(), batches=1)) == {"easy", "roi"}
    # the check itself bites: an unmoved batch is refused
    with pytest.raises(AssertionError, match="without the device move"):
        monkeypatch.setattr(M3, "_to", lambda b, device: b)
        M3.probe_lm(model, r, "L", M3.build_processor())


def test_a_continued_stage_c_starts_from_the_earlier_towers_weights_before_its_projector_rescale(tmp_path):
    """run 19 (`--c-init RUN`): stage C goes on from RUN's tower and projector as contrastive training left them --
    the rescale RUN's stage C ended with (match_projector_scale, in its history) undone, so that rescaling again
    gives RUN's stage-C weights back; the other weights are RUN's too."""
    first = tmp_path / "first"
    M3.train(first, _micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), workers=0, log=lambda *_: None)
    saved = torch.load(first / "stage-C.pt", weights_only=False)["model"]
    k = next(h["projector_scale"] for h in json.loads((first / "history.json").read_text()) if "projector_scale" in h)
    assert k != 1.0
    r = _micro()
    model = M3.build_model(r, M3.build_processor().tokenizer)
    assert M3.continue_tower(model, first) == k
    now = model.state_dict()
    w2 = "model.multi_modal_projector.linear_2.weight"
    assert torch.allclose(now[w2] * k, saved[w2]) and not torch.allclose(now[w2], saved[w2])
    assert all(torch.equal(now[n], saved[n]) for n in saved if "linear_2" not in n)
    pv = M3.make_c_batch(r, 0, M3.build_processor())["pixel_values"]
    with torch.no_grad():
        assert M.match_projector_scale(model, pv) == pytest.approx(k, rel=1e-5)
    assert torch.allclose(model.state_dict()[w2], saved[w2], atol=1e-7)


def test_c_init_reaches_the_trainer_and_a_resumed_run_does_not_reload_it(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(M3, "train", lambda out, r, **kw: seen.update(kw) or {"passed": False, "final": None,
                                                                              "failed_stage": "I"})
    M3.main(["--out", str(tmp_path), "--variant", "run-19", "--c-init", "somewhere"])
    assert seen["c_init"] == "somewhere"
    monkeypatch.undo()
    loaded = []
    monkeypatch.setattr(M3, "continue_tower", lambda model, run: loaded.append(run))
    run = tmp_path / "run"
    M3.train(run, _micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), workers=0, log=lambda *_: None)
    again = M3.train(run, _micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), workers=0, log=lambda *_: None,
                     c_init=tmp_path / "elsewhere")   # stage C is done: its own weights win, nothing reloaded
    assert loaded == [] and again["final"] is not None
    continued = tmp_path / "continued"
    monkeypatch.undo()
    M3.train(continued, _micro(gates={"C": {}, "P": {}, "L": {}, "I": {}}), workers=0, log=lambda *_: None,
             c_init=run)
    hist = json.loads((continued / "final" / "focuslib.json").read_text())["history"]
    assert [h["continued_from"] for h in hist if "continued_from" in h] == [str(run)]   # the record says so
