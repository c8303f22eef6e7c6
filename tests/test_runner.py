"""The evaluation runner on the tiny LLaVA over synthetic benchmarks: resume, errors, FP accounting,
sharding, permutation reuse, logits matching, the LLM judge and `focus eval`."""
import json

import pytest

from focuslib.eval.benchmarks import load_benchmark
from focuslib.cli import main
from focuslib.core.config import preset
from focuslib.eval.runner import evaluate, merge_shards, read_records
from focuslib.eval.schemes import LLMJudge, logits_match, parse_verdict
from focuslib.core.search import Focus
from focuslib.offline.synthetic_benchmarks import write_synthetic

SIZE = (160, 120)


@pytest.fixture(scope="module")
def vstar_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vstar")
    write_synthetic("vstar", d, n=6, size=SIZE)
    return d


def _ids(path):
    return [r["id"] for r in read_records(path)]


def test_resume_after_crash_each_sample_exactly_once(tiny_llava, vstar_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    orig = type(tiny_llava).generate

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th sample dies mid-way (Ctrl-C, OOM kill ...)
            raise KeyboardInterrupt
        return orig(self, *a, **k)
    monkeypatch.setattr(type(tiny_llava), "generate", crashing)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_llava, "vstar", "vanilla", out_dir=tmp_path, source=vstar_dir, progress=False)
    path = next(tmp_path.glob("vstar__*__vanilla__generate.jsonl"))  # the model's name is in the stem
    assert _ids(path) == ["0", "1", "2"]
    with open(path, "a") as f:
        f.write('{"id": "3", "pred": "A", "corr')  # a torn line from a crash during the write
    monkeypatch.setattr(type(tiny_llava), "generate", orig)
    seen = []
    res = evaluate(tiny_llava, "vstar", "vanilla", out_dir=tmp_path, source=vstar_dir, progress=False,
                   on_record=lambda r: seen.append(r["id"]))
    assert seen == ["3", "4", "5"]  # only the unfinished samples ran
    assert sorted(_ids(path)) == [str(i) for i in range(6)] and len(res["records"]) == 6
    evaluate(tiny_llava, "vstar", "vanilla", out_dir=tmp_path, source=vstar_dir, progress=False,
             on_record=lambda r: seen.append(r["id"]))
    assert len(seen) == 3 and len(_ids(path)) == 6  # a third run does nothing


def test_corrupt_image_is_recorded_and_run_completes(tiny_llava, tmp_path):
    write_synthetic("aokvqa", tmp_path / "data", n=3, size=SIZE, corrupt=[1])
    res = evaluate(tiny_llava, "aokvqa", "vanilla", out_dir=tmp_path / "out", source=tmp_path / "data",
                   progress=False, print_table=False)
    recs = {r["id"]: r for r in res["records"]}
    assert len(recs) == 3 and recs["q0001"]["error"].startswith("FocusInputError")
    assert recs["q0001"]["correct"] is False and recs["q0000"]["error"] is None and recs["q0002"]["pred"] is not None
    assert res["summary"]["overall"]["errors"] == 1 and res["summary"]["overall"]["n"] == 3
    # rerun skips the error unless asked to retry it
    again = []
    evaluate(tiny_llava, "aokvqa", "vanilla", out_dir=tmp_path / "out", source=tmp_path / "data", progress=False,
             print_table=False, on_record=lambda r: again.append(r["id"]))
    assert again == []
    evaluate(tiny_llava, "aokvqa", "vanilla", out_dir=tmp_path / "out", source=tmp_path / "data", progress=False,
             print_table=False, retry_errors=True, on_record=lambda r: again.append(r["id"]))
    assert again == ["q0001"] and len(read_records(res["path"])) == 3


def test_fp_counts_equal_the_traces(tiny_llava, vstar_dir, tmp_path):
    res = evaluate(tiny_llava, "vstar", "focus", n_steps=2, limit=3, out_dir=tmp_path, source=vstar_dir,
                   progress=False, print_table=False, flops=True)
    samples = load_benchmark("vstar", source=vstar_dir)[:3]
    focus = Focus(tiny_llava, preset(tiny_llava.family, "vstar", n_steps=2))
    for r, s in zip(res["records"], samples):
        tr = focus.answer(s.image(), s.question, answer_prompt=s.prompt)
        assert r["search_fp"] == r["trace"]["search_fp"] == tr.search_fp > 0
        assert r["search_fp"] == r["model_calls"]["relevance"] + r["model_calls"]["verify_crops"]
        assert r["pred"] == tr.answer and r["flops"] > 0 and r["time_s"] > 0
        assert len(r["rois"]) == sum(max(1, len(t["verified"])) for t in r["trace"]["per_target"])
    assert res["summary"]["overall"]["fp"] == pytest.approx(sum(r["search_fp"] for r in res["records"]) / 3)
    assert res["recall"] is not None


def test_ablations_are_separate_runs(tiny_llava, vstar_dir, tmp_path):
    a = evaluate(tiny_llava, "vstar", "focus", n_steps=2, limit=1, out_dir=tmp_path, source=vstar_dir,
                 progress=False, print_table=False, map_variant="random", ranking=False, layers=(0, 2))
    assert "focus+map-random+no-ranking+layers-0-2__n2" in a["stem"]
    r = a["records"][0]
    assert r["search_fp"] == 0  # random map: no map pass; no ranking: no verification (D18, D19)
    assert all(t["verified"] == [] for t in r["trace"]["per_target"])


def test_shards_and_merge(tiny_llava, vstar_dir, tmp_path):
    for rank in range(2):
        evaluate(tiny_llava, "vstar", "vanilla", limit=5, out_dir=tmp_path, source=vstar_dir, progress=False,
                 print_table=False, shard=(rank, 2))
    stem = next(tmp_path.glob("vstar__*__vanilla__generate.meta.json")).name[:-len(".meta.json")]
    assert _ids(tmp_path / f"{stem}.shard0of2.jsonl") == ["0", "2", "4"]
    assert _ids(tmp_path / f"{stem}.shard1of2.jsonl") == ["1", "3"]
    merged = merge_shards(tmp_path, stem)
    assert sorted(_ids(merged)) == ["0", "1", "2", "3", "4"]


def test_hrbench_permutation_reuse(tiny_llava, tmp_path):
    write_synthetic("hrbench_4k", tmp_path / "hr", n=2, size=SIZE)
    kw = dict(n_steps=1, out_dir=tmp_path / "out", source=tmp_path / "hr", progress=False, print_table=False)
    plain = evaluate(tiny_llava, "hrbench_4k", "focus", **kw)
    reuse = evaluate(tiny_llava, "hrbench_4k", "focus", reuse_permutations=True, **kw)
    assert plain["path"] != reuse["path"] and reuse["stem"].endswith("__reuse")
    rr = reuse["records"]
    assert [r.get("reused_from") for r in rr] == [None, "0", "0", "0", None, "4", "4", "4"]
    assert all(r["search_fp"] == 0 for r in rr if r.get("reused_from"))
    assert all(r["model_calls"] == {"answer": 1, "total": 1} for r in rr if r.get("reused_from"))
    for r in rr:  # the reused search gives the same crop
        anchor = rr[int(r.get("reused_from") or r["id"])]
        assert r["trace"]["chosen_boxes"] == anchor["trace"]["chosen_boxes"]
    assert sum(r["search_fp"] for r in plain["records"]) > sum(r["search_fp"] for r in rr)
    assert "reused searches: 6 of 8" in reuse["table"]


def test_logits_matching_scheme(tiny_llava, vstar_dir, tmp_path):
    s = load_benchmark("vstar", source=vstar_dir)[0]
    tiny_llava.calls.clear()
    best, scores = logits_match(tiny_llava, [s.image()], s.question, s.option_sentences)
    assert len(scores) == len(s.option_sentences) and all(sc < 0 for sc in scores)
    assert scores[best] == max(scores) and tiny_llava.calls["logits_match"] == len(scores)
    res = evaluate(tiny_llava, "vstar", "vanilla", limit=2, out_dir=tmp_path, source=vstar_dir, scheme="logits",
                   progress=False, print_table=False)
    r = res["records"][0]
    assert r["pred"] in s.option_sentences and r["correct"] == (r["pred"] == s.option_sentences[0])
    assert r["model_calls"]["logits_match"] == len(s.option_sentences) and "answer" not in r["model_calls"]
    with pytest.raises(ValueError, match="only V\\*Bench"):
        evaluate(tiny_llava, "aokvqa", "vanilla", samples=[], out_dir=tmp_path, scheme="logits")


def test_judge_prompt_and_parsing_with_a_scripted_judge(tiny_llava, vstar_dir, tmp_path):
    assert parse_verdict("Correct.") is True and parse_verdict("incorrect") is False
    assert parse_verdict("The answer is correct") is True and parse_verdict("No, wrong colour") is False
    assert parse_verdict("maybe") is None and parse_verdict("") is None
    prompts = []

    def scripted(p):
        prompts.append(p)
        return ["correct", "Incorrect.", "hmm"][len(prompts) - 1]
    judge = LLMJudge(scripted)
    res = evaluate(tiny_llava, "vstar", "vanilla", limit=3, out_dir=tmp_path, source=vstar_dir, scheme="open",
                   judge=judge, progress=False, print_table=False)
    samples = load_benchmark("vstar", source=vstar_dir)[:3]
    for p, s, r in zip(prompts, samples, res["records"]):
        assert f"Question: {s.question}\n" in p and f"Reference answer: {s.option_sentences[0]}\n" in p
        assert f"Answer to grade: {r['pred'] or '(no answer)'}\n" in p and "(A)" not in p  # no options shown
    assert [r["correct"] for r in res["records"]] == [True, False, False]
    assert [r["judge"]["needs_review"] for r in res["records"]] == [False, False, True]


def _tiny_judge(path, **generation):
    """A tiny random Qwen2 chat LM saved at `path`; `generation` goes into its generation_config.json."""
    import torch
    import transformers as T
    from focuslib.offline.tiny import build_tokenizer
    tok = build_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = T.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = T.Qwen2ForCausalLM(cfg)
    for k, v in generation.items():
        setattr(model.generation_config, k, v)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return tok


def test_judge_runs_a_tiny_random_qwen2(tmp_path):
    _tiny_judge(tmp_path)
    judge = LLMJudge.from_pretrained(str(tmp_path), device="cpu", dtype="float32", max_new_tokens=4)
    v = judge("What is the color of the dog?", "The color of the dog is white.", "white")
    assert set(v) == {"correct", "verdict", "raw", "needs_review"} and isinstance(v["raw"], str)
    assert v["correct"] is bool(v["verdict"]) and judge.calls == 1


def test_judge_ignores_the_checkpoints_sampling_settings(tmp_path):
    # Qwen2.5-7B-Instruct ships repetition_penalty 1.05 and sampling defaults (D26); planted here, stronger, so
    # they change this tiny model's text. The judge must equal a literal greedy loop (full recompute, argmax,
    # stop at eos); the old `model.generate(do_sample=False)` inherited the penalties and does not.
    import torch
    import transformers as T
    tok = _tiny_judge(tmp_path, repetition_penalty=3.0, no_repeat_ngram_size=2, do_sample=True, temperature=0.1,
                      top_k=1)
    model = T.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert model.generation_config.repetition_penalty == 3.0           # the checkpoint really carries it
    judge = LLMJudge.from_pretrained(str(tmp_path), device="cpu", dtype="float32", max_new_tokens=12)
    q, ref_answer, resp = "What is the color of the dog?", "The color of the dog is white.", "white"
    text = tok.apply_chat_template([{"role": "user", "content": judge.prompt(q, ref_answer, resp)}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")["input_ids"]
    stop, new = {tok.eos_token_id, model.generation_config.eos_token_id}, []
    with torch.no_grad():
        seq = ids
        for _ in range(12):
            t = int(model(input_ids=seq, use_cache=False).logits[0, -1].argmax())
            if t in stop:
                break
            new.append(t)
            seq = torch.cat([seq, torch.tensor([[t]])], 1)
        hf = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                            pad_token_id=tok.pad_token_id)
    ref = tok.decode(new, skip_special_tokens=True).strip()
    old = tok.decode(hf[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert old != ref, "the planted settings should matter on this model (else the test proves nothing)"
    assert judge(q, ref_answer, resp)["raw"] == ref


def test_focus_eval_cli_prints_a_per_category_table(tiny_llava_path, tmp_path, capsys):
    rc = main(["eval", "--model", str(tiny_llava_path), "--benchmark", "vstar", "--method", "focus",
               "--n-steps", "1", "--no-overrun", "--limit", "4", "--out", str(tmp_path), "--data", "synthetic",
               "--synthetic-n", "4", "--synthetic-size", "160", "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "category=Attr" in out and "category=Spatial" in out and "overall" in out and "recall" in out
    lines = read_records(next(tmp_path.glob("vstar__*__focus+no-overrun__n1__generate.jsonl")))
    assert len(lines) == 4 and all("trace" in r and r["error"] is None for r in lines)
    assert json.loads(next(tmp_path.glob("*.meta.json")).read_text())["config"]["n_steps"] == 1
    # same out dir, different settings -> a new file; unknown benchmark source -> clear error
    rc = main(["eval", "--model", str(tiny_llava_path), "--benchmark", "gqa", "--method", "vanilla",
               "--out", str(tmp_path), "--data", str(tmp_path / "missing"), "--device", "cpu"])
    assert rc == 2 and "lmms-lab/GQA" in capsys.readouterr().err
