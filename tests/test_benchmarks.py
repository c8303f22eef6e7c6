"""Every benchmark loader on a synthetic copy of its real schema: exact field values round-trip."""
import base64
import json

import pandas as pd
import pytest

from focuslib.eval.benchmarks import BENCHMARKS, BenchmarkError, decode_image, get_spec, load_benchmark
from focuslib.images import FocusInputError
from focuslib.offline.synthetic_benchmarks import write_synthetic

SIZE = (160, 120)


def test_every_paper_benchmark_is_declared_as_data():
    assert {"vstar", "hrbench_4k", "hrbench_8k", "mme_rw_lite", "aokvqa", "gqa"} <= set(BENCHMARKS)
    assert get_spec("vstar").hub_id == "craigwu/vstar_bench"
    assert get_spec("hrbench8k").hub_id == "DreamMr/HR-Bench"
    assert get_spec("mme").hub_id == "yifanzhang114/MME-RealWorld-lite-lmms-eval"
    assert get_spec("aokvqa").split == "validation" and get_spec("gqa").config == "testdev_balanced_instructions"
    assert get_spec("hrbench_4k").categories == {"single": "FSP", "cross": "FCP"}


def test_vstar_round_trip(tmp_path):
    truth = write_synthetic("vstar", tmp_path, n=4, size=SIZE)
    s = load_benchmark("vstar", source=tmp_path)
    assert [x.id for x in s] == [t["id"] for t in truth]
    for x, t in zip(s, truth):
        assert x.answer == t["answer"] and x.options == t["options"] and x.question == t["question"]
        assert x.prompt == t["text"]  # the jsonl text, unchanged
        assert x.category == {"direct_attributes": "Attr", "relative_position": "Spatial"}[t["category"]]
        assert x.gt_boxes == [list(map(float, b)) for b in t["bboxes"]] and x.targets == t["targets"]
        assert x.option_sentences and len(x.option_sentences) == len(t["options"])
        correct = t["options"]["ABCD".index(t["answer"])]
        assert correct in x.option_sentences[0]  # correct sentence first
        assert x.image().size == SIZE


@pytest.mark.parametrize("fmt,refs", [("parquet", False), ("tsv", False), ("tsv", True)])
def test_hrbench_round_trip_and_permutation_groups(tmp_path, fmt, refs):
    truth = write_synthetic("hrbench_8k", tmp_path, n=2, size=SIZE, fmt=fmt, image_refs=refs)
    s = load_benchmark("hrbench_8k", source=tmp_path)
    assert len(s) == 8 and [x.id for x in s] == [t["id"] for t in truth]
    for x, t in zip(s, truth):
        assert (x.answer, x.options, x.question, x.category, x.groups["cycle"]) == \
            (t["answer"], t["options"], t["question"], t["category"], t["cycle"])
        assert x.prompt == t["question"] + "\n" + "\n".join(
            f"{L}. {o}" for L, o in zip("ABCD", t["options"])) + "\nAnswer the option letter directly."
    assert len({x.group for x in s[:4]}) == 1 and s[0].group != s[4].group
    assert s[3].image().tobytes() == s[0].image().tobytes()  # shared image (also through an index reference)
    assert not (tmp_path / "hr_bench_4k.parquet").exists()
    with pytest.raises(BenchmarkError, match="hr_bench_4k"):
        load_benchmark("hrbench_4k", source=tmp_path)


def test_mme_round_trip_and_groups(tmp_path):
    truth = write_synthetic("mme_rw_lite", tmp_path, n=6, size=SIZE)
    s = load_benchmark("mme_rw_lite", source=tmp_path)
    for x, t in zip(s, truth):
        assert (x.id, x.answer, x.options) == (t["id"], t["answer"], t["options"])
        assert x.groups == {"subset": t["subset"], "category": t["category"], "task": t["task"]}
        assert x.prompt.startswith(t["question"] + " The choices are listed below:\n(A) ")
        assert x.prompt.endswith("The best answer is:")
    assert s[0].image().size == SIZE


def test_aokvqa_round_trip(tmp_path):
    truth = write_synthetic("aokvqa", tmp_path, n=4, size=SIZE)
    s = load_benchmark("aokvqa", source=tmp_path)
    assert [(x.id, x.answer, x.options, x.question) for x in s] == \
        [(t["id"], t["answer"], t["options"], t["question"]) for t in truth]
    assert {x.answer for x in s} == {"A", "B", "C", "D"}  # index -> letter for every position
    assert s[0].image().size == SIZE


def test_gqa_join_by_image_id(tmp_path):
    truth = write_synthetic("gqa", tmp_path, n=3, size=SIZE)
    s = load_benchmark("gqa", source=tmp_path)
    assert [(x.id, x.answer, x.question, x.category, x.meta["imageId"]) for x in s] == \
        [(t["id"], t["answer"], t["question"], t["category"], t["imageId"]) for t in truth]
    assert s[0].options == [] and s[0].prompt.endswith("Answer the question using a single word or phrase.")
    assert s[0].image().tobytes() == s[1].image().tobytes() != s[2].image().tobytes()


def test_missing_field_names_dataset_and_field(tmp_path):
    write_synthetic("mme_rw_lite", tmp_path, n=2, size=SIZE)
    f = tmp_path / "data" / "train-00000-of-00001.parquet"
    pd.read_parquet(f).rename(columns={"multi-choice options": "choices"}).to_parquet(f)
    with pytest.raises(BenchmarkError) as e:
        load_benchmark("mme_rw_lite", source=tmp_path)
    assert "yifanzhang114/MME-RealWorld-lite-lmms-eval" in str(e.value) and "multi-choice options" in str(e.value)


def test_vstar_missing_field(tmp_path):
    write_synthetic("vstar", tmp_path, n=2, size=SIZE)
    j = tmp_path / "test_questions.jsonl"
    lines = [json.loads(x) for x in j.read_text().splitlines()]
    del lines[1]["label"]
    j.write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(BenchmarkError, match=r"craigwu/vstar_bench.*label"):
        load_benchmark("vstar", source=tmp_path)


@pytest.mark.parametrize("name", ["gqa", "vstar", "hrbench_4k"])
def test_unreachable_hub_says_what_to_do(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-focus-test-cache")
    with pytest.raises(BenchmarkError) as e:
        load_benchmark(name)
    msg = str(e.value)
    assert get_spec(name).hub_id in msg and f"hf download {get_spec(name).hub_id} --repo-type dataset" in msg
    assert "huggingface-cli" not in msg   # gone from the pinned huggingface_hub (issue 13)


def test_missing_local_source(tmp_path):
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark("aokvqa", source=tmp_path / "nope")


def test_corrupt_image_is_an_error_naming_the_sample(tmp_path):
    write_synthetic("aokvqa", tmp_path, n=3, size=SIZE, corrupt=[1])
    s = load_benchmark("aokvqa", source=tmp_path)  # loading stays lazy: no error yet
    assert s[0].image().size == SIZE
    with pytest.raises(FocusInputError, match="aokvqa sample q0001"):
        s[1].image()


def test_decode_image_accepts_every_storage(tmp_path):
    from PIL import Image
    im = Image.new("RGB", (7, 5), (1, 2, 3))
    im.save(tmp_path / "a.png")
    raw = (tmp_path / "a.png").read_bytes()
    for v in (im, raw, base64.b64encode(raw).decode(), {"bytes": raw, "path": None}, str(tmp_path / "a.png"),
              {"bytes": None, "path": "a.png"}):
        out = decode_image(v, root=tmp_path)
        assert out.size == (7, 5) and out.getpixel((0, 0)) == (1, 2, 3)
