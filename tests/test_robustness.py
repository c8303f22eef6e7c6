"""Issue 14: bad input and interrupted runs. Every failure is one line and exit code 2 (no traceback),
nothing silently wrong, no state that needs hand repair. docs/robustness.md lists each case and its test."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from focuslib.cli import build_parser, main
from focuslib.core.config import preset
from focuslib.eval.runner import RunError, evaluate, merge_shards, read_records, run_lock, unique_records
from focuslib.core.search import Focus
from focuslib.offline import embedded
from focuslib.offline.synthetic_benchmarks import MARKER, default_n, ensure_synthetic, write_synthetic

SIZE = (160, 120)
Q = "What is the color of the umbrella?"


def run(argv, capsys):
    """(exit code, stdout, stderr) of `focus argv`, argparse's own exits included."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def bomb_png(path, w=30000, h=30000):
    """A tiny PNG whose header claims w x h pixels (a decompression bomb, without the memory)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17]))
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    Image.new("RGB", (64, 48), (9, 90, 200)).save(d / "img.png")
    bomb_png(d / "bomb.png")
    (d / "empty").mkdir()
    (d / "noweights").mkdir()
    (d / "noweights" / "config.json").write_text('{"model_type": "llava"}')
    (d / "afile").write_text("x")
    return d


def _ask(model, files, *extra, question="What is the color of the car?"):
    return ["ask", "--model", model, "--image", files / "img.png", "--question", question, "--device", "cpu",
            "--n-steps", "1", *extra]


# (argv builder, expected text in the one-line error); every case: exit code 2, no traceback
CASES = {
    "empty question": (lambda m, f: _ask(m, f, question="   "), "question is empty"),
    "decompression bomb": (lambda m, f: ["ask", "--model", m, "--image", f / "bomb.png", "--question", Q],
                           "30000x30000 = 900 Mpx, over the decompression-bomb limit"),
    "<image> in question": (lambda m, f: _ask(m, f, question="What is <image> here?"), "special token(s) ['<image>']"),
    "<image> in target": (lambda m, f: _ask(m, f, "--targets", "red <image>"), "special token(s) ['<image>']"),
    "unknown model": (lambda m, f: _ask("nosuchmodel", f), "neither a local directory nor a hub id"),
    "empty model dir": (lambda m, f: _ask(str(f / "empty"), f), "is empty: not a Hugging Face checkpoint"),
    "config without weights": (lambda m, f: _ask(str(f / "noweights"), f), "no weights"),
    "dtype float64": (lambda m, f: _ask(m, f, "--dtype", "float64"), "invalid choice: 'float64'"),
    "unknown device": (lambda m, f: _ask(m, f, "--device", "tpu"), "unknown device 'tpu'"),
    "eval unknown benchmark": (lambda m, f: ["eval", "--model", m, "--benchmark", "nosuch"], "unknown benchmark 'nosuch'"),
    "eval --out under a file": (lambda m, f: ["eval", "--model", m, "--benchmark", "vstar", "--out", f / "afile" / "x"],
                                "is a file, not a directory"),
    "ask --json under a file": (lambda m, f: _ask(m, f, "--json", f / "afile" / "t.json"), "is a file, not a directory"),
    "eval --data an image": (lambda m, f: ["eval", "--model", m, "--benchmark", "vstar", "--data", f / "img.png",
                                           "--out", f / "o"], "is a .png file"),
    "limit -1": (lambda m, f: ["eval", "--model", m, "--benchmark", "vstar", "--limit", "-1"], "must be at least 1"),
    "limit 0": (lambda m, f: ["eval", "--model", m, "--benchmark", "vstar", "--limit", "0"], "must be at least 1"),
    "n-steps 0": (lambda m, f: _ask(m, f, "--n-steps", "0"), "must be at least 1"),
    "n-steps -1": (lambda m, f: _ask(m, f, "--n-steps", "-1"), "must be at least 1"),
    "layers 40 50": (lambda m, f: _ask(m, f, "--layers", "40", "50"), "[40, 50) is out of range"),
    "layers 10 5": (lambda m, f: _ask(m, f, "--layers", "10", "5"), "[10, 5) is empty"),
    "layers -5 3": (lambda m, f: _ask(m, f, "--layers", "-5", "3"), "[-5, 3) is out of range"),
    "targets empty": (lambda m, f: _ask(m, f, "--targets", ""), "only empty names"),
    "targets all": (lambda m, f: _ask(m, f, "--targets", "all"), "names no object"),
    "unknown preset benchmark": (lambda m, f: _ask(m, f, "--benchmark", "nosuchbench"), "unknown --benchmark"),
    "synthetic size too small": (lambda m, f: ["eval", "--model", m, "--benchmark", "vstar", "--data", "synthetic",
                                               "--synthetic-size", "50", "--out", f / "o"], "too small"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_code_2(case, tiny_llava_path, files, capsys):
    argv, expect = CASES[case]
    rc, out, err = run(argv(str(tiny_llava_path), files), capsys)
    assert rc == 2, (case, out, err)
    assert expect in err and "Traceback" not in err + out
    line = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(line) == 1


def test_cuda_without_cuda_is_one_line(tiny_llava_path, files, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, _, err = run(_ask(str(tiny_llava_path), files, "--device", "cuda"), capsys)
    assert rc == 2 and "torch sees no CUDA GPU" in err and "--device cpu" in err


def test_layer_messages_name_both_depths():
    with pytest.raises(Exception, match="32-layer model; this model has 4 layers"):
        preset("llava-1.5", layers=(40, 50)).resolved_layers(4)
    assert preset("llava-1.5", layers=(0, 32)).resolved_layers(4) == range(0, 4)
    with pytest.raises(Exception, match="n_steps must be a positive integer"):
        preset("llava-1.5", n_steps=0)


def test_debug_flag_shows_the_traceback(tiny_llava_path):
    from focuslib.eval.benchmarks import BenchmarkError
    with pytest.raises(BenchmarkError):
        main(["--debug", "eval", "--model", str(tiny_llava_path), "--benchmark", "nosuch"])


def test_ctrl_c_is_one_line(tiny_llava_path, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("focuslib.cli.evaluate", interrupted)   # cli binds evaluate at import
    rc, out, err = run(["eval", "--model", tiny_llava_path, "--benchmark", "vstar", "--data", "synthetic",
                        "--synthetic-size", "160", "--limit", "1", "--out", tmp_path, "--device", "cpu"], capsys)
    assert rc == 130 and "run the same command again to resume" in err and "Traceback" not in err


def test_every_option_has_help_with_its_default():
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "cmd")
    for name, p in sub.choices.items():
        text = p.format_help()
        for a in p._actions:
            if a.dest == "help":
                continue
            assert a.help, (name, a.option_strings)
            if a.nargs != 0 and not a.required and a.default is not None:
                assert f"(default: {a.default})" in " ".join(text.split()), (name, a.option_strings)
        assert "tiny, random-tiny" in " ".join(text.split())  # the model aliases are listed


def test_model_aliases_everywhere(tiny_llava_path, files, capsys, monkeypatch):
    """`focus ask --model tiny` works as `focus eval --model tiny` does (one resolver)."""
    monkeypatch.setattr(embedded, "embedded_default", lambda: (str(tiny_llava_path), None))
    rc, out, err = run(_ask("tiny", files), capsys)
    assert rc == 0 and "answer:" in out and "relevance layers [" in out
    assert embedded.resolve_model("llava-1.5-7b") == "llava-hf/llava-1.5-7b-hf"
    assert embedded.resolve_model("org/name") == "org/name"


# ------------------------------------------------------------------------------------------------
# results files


@pytest.fixture(scope="module")
def vstar_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vstar")
    write_synthetic("vstar", d, n=6, size=SIZE)
    return d


def _eval(mllm, src, out, **kw):
    return evaluate(mllm, "vstar", "vanilla", out_dir=out, source=src, progress=False, print_table=False, **kw)


def test_negative_limit_is_an_error_not_a_slice(tiny_llava, vstar_dir, tmp_path):
    with pytest.raises(RunError, match="limit must be a positive"):
        _eval(tiny_llava, vstar_dir, tmp_path, limit=-1)  # Python slicing would run 5 of 6


def test_record_without_final_newline_is_not_glued(tiny_llava, vstar_dir, tmp_path):
    res = _eval(tiny_llava, vstar_dir, tmp_path, limit=3)
    path = res["path"]
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text.rstrip("\n"))  # a record without its final newline (a kill between the two writes)
    res = _eval(tiny_llava, vstar_dir, tmp_path)
    assert res["summary"]["overall"]["n"] == 6
    assert sorted(r["id"] for r in read_records(path)) == [str(i) for i in range(6)]
    assert open(path).read().count("\n") == 6


def test_glued_records_of_older_versions_are_split(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": "0", "correct": true}{"id": "1", "correct": false}\n{"id": "2"}\n')
    assert [r["id"] for r in read_records(p, repair=True)] == ["0", "1", "2"]
    assert p.read_text().count("\n") == 3


def test_second_writer_is_refused_and_duplicates_count_once(tiny_llava, vstar_dir, tmp_path):
    res = _eval(tiny_llava, vstar_dir, tmp_path, limit=3)
    path = res["path"]
    from pathlib import Path
    with run_lock(Path(path)):  # another `focus eval` writing the same file
        with pytest.raises(RunError, match="another run .* is writing"):
            _eval(tiny_llava, vstar_dir, tmp_path, limit=3)
    # a file with duplicates (two writers of an older version): the summary counts each id once, last wins
    lines = open(path).read().splitlines()
    last = json.loads(lines[0])
    last["correct"] = not last["correct"]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n" + json.dumps(last) + "\n")
    res = _eval(tiny_llava, vstar_dir, tmp_path, limit=3)
    assert res["summary"]["overall"]["n"] == 3 and len(res["records"]) == 3
    assert next(r for r in res["records"] if r["id"] == last["id"])["correct"] == last["correct"]
    assert unique_records([{"id": "a", "v": 1}, {"id": "b"}, {"id": "a", "v": 2}])[-1] == {"id": "a", "v": 2}


def test_newest_record_wins_the_merge(tmp_path):
    """An error fixed by --retry-errors in a single-process run must not come back from a stale shard."""
    stem = "s"
    (tmp_path / f"{stem}.shard0of2.jsonl").write_text(
        json.dumps({"id": "0", "error": "OOM", "finished_at": 100.0}) + "\n" + json.dumps({"id": "2", "finished_at": 100.0}) + "\n")
    (tmp_path / f"{stem}.shard1of2.jsonl").write_text(json.dumps({"id": "1", "finished_at": 100.0}) + "\n")
    (tmp_path / f"{stem}.jsonl").write_text(json.dumps({"id": "0", "error": None, "finished_at": 200.0}) + "\n")
    merged = {r["id"]: r for r in read_records(merge_shards(tmp_path, stem))}
    assert sorted(merged) == ["0", "1", "2"] and merged["0"]["error"] is None
    assert not list(tmp_path.glob("*.shard*"))  # merged shards are removed: nothing stale is left to win later
    # records of older versions carry no time: their file's modification time decides
    (tmp_path / f"{stem}.shard0of2.jsonl").write_text(json.dumps({"id": "0", "error": "stale"}) + "\n")
    os.utime(tmp_path / f"{stem}.shard0of2.jsonl", (1, 1))
    merged = {r["id"]: r for r in read_records(merge_shards(tmp_path, stem))}
    assert merged["0"]["error"] is None


@pytest.mark.parametrize("content,expect", [
    ('{"id": "0"}\n[1, 2]\n', "line 2 is a JSON list, not a record"),
    ('{"id": "0"}\n{"pred": "A"}\n', "line 2 has no 'id'"),
    (b'{"id": "0"}\n{"id": "1", "pred": "\xff\xfe"}\n', "line 2 is not UTF-8"),
])
def test_foreign_results_lines_are_one_line_errors(tiny_llava_path, tmp_path, capsys, content, expect):
    argv = ["eval", "--model", tiny_llava_path, "--benchmark", "vstar", "--method", "vanilla", "--data", "synthetic",
            "--synthetic-size", "160", "--limit", "2", "--out", tmp_path, "--device", "cpu", "--no-progress"]
    assert run(argv, capsys)[0] == 0
    path = next(tmp_path.glob("vstar__*.jsonl"))
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, out, err = run(argv, capsys)
    assert rc == 2 and expect in err and "Traceback" not in err


def test_empty_meta_json_is_a_one_line_error(tiny_llava_path, tmp_path, capsys):
    argv = ["eval", "--model", tiny_llava_path, "--benchmark", "vstar", "--method", "vanilla", "--data", "synthetic",
            "--synthetic-size", "160", "--limit", "1", "--out", tmp_path, "--device", "cpu", "--no-progress"]
    assert run(argv, capsys)[0] == 0
    next(tmp_path.glob("*.meta.json")).write_text("")
    rc, out, err = run(argv, capsys)
    assert rc == 2 and "is empty or not JSON" in err and "delete it" in err


# ------------------------------------------------------------------------------------------------
# synthetic data


def test_interrupted_generation_leaves_no_half_benchmark(tmp_path, monkeypatch):
    import focuslib.offline.synthetic_benchmarks as SB
    root = tmp_path / "_data" / "vstar"
    real = SB.write_synthetic

    def killed(name, dest, **kw):  # the files of a few samples, then the process dies
        real(name, dest, **{**kw, "n": 2})
        raise KeyboardInterrupt
    monkeypatch.setattr(SB, "write_synthetic", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic("vstar", root, n=4, size=SIZE)
    assert not root.exists()  # nothing a later run would mistake for the benchmark
    monkeypatch.setattr(SB, "write_synthetic", real)
    # a directory half-written by an older version (no completeness marker) is written again
    root.mkdir(parents=True)
    (root / "test_questions.jsonl").write_text('{"image": "x.jpg"')
    ensure_synthetic("vstar", root, n=4, size=SIZE, log=lambda m: None)
    from focuslib.eval.benchmarks import load_benchmark
    assert len(load_benchmark("vstar", source=root)) == 4 and (root / MARKER).exists()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary dirs left


def test_synthetic_n_follows_the_request(tmp_path, tiny_llava_path, capsys):
    assert default_n("vstar", None) == 8 and default_n("vstar", 100) == 100 and default_n("hrbench_4k", 100) == 25
    root = tmp_path / "v"
    ensure_synthetic("vstar", root, n=3, size=SIZE)
    msgs = []
    ensure_synthetic("vstar", root, n=5, size=SIZE, log=msgs.append)  # was silently ignored before
    from focuslib.eval.benchmarks import load_benchmark
    assert len(load_benchmark("vstar", source=root)) == 5 and "writing it again with n=5" in msgs[0]
    argv = ["eval", "--model", tiny_llava_path, "--benchmark", "vstar", "--method", "vanilla", "--data", "synthetic",
            "--synthetic-size", "160", "--limit", "10", "--out", tmp_path / "o", "--device", "cpu", "--no-progress"]
    rc, out, _ = run(argv, capsys)
    assert rc == 0 and "10 items" in out and "| 10 samples" in out  # --limit 10 gets 10 samples, not 8


# ------------------------------------------------------------------------------------------------
# traces


def test_trace_records_resolved_layers(tiny_llava, vstar_dir, tmp_path):
    f = Focus(tiny_llava, preset("llava-1.5", "vstar", n_steps=1, layers=(0, 32)))
    tr = f.answer(Image.new("RGB", (200, 150)), Q, targets=["umbrella"])
    assert tr.layers == (0, tiny_llava.num_layers) and tr.summary()["layers"] == [0, tiny_llava.num_layers]
    res = evaluate(tiny_llava, "vstar", "focus", n_steps=1, limit=1, out_dir=tmp_path, source=vstar_dir,
                   progress=False, print_table=False)
    expect = preset("llava-1.5", "vstar").resolved_layers(tiny_llava.num_layers)
    assert res["records"][0]["trace"]["layers"] == [expect.start, expect.stop]


def test_unknown_target_word_is_noted(tiny_llava, monkeypatch):
    orig = type(tiny_llava).relevance_pass

    def unk_only(self, *a, **k):
        rp = orig(self, *a, **k)
        rp.target_tokens = [self.tokenizer.unk_token] * len(rp.target_tokens)
        return rp
    monkeypatch.setattr(type(tiny_llava), "relevance_pass", unk_only)
    tr = Focus(tiny_llava, preset("llava-1.5", n_steps=1)).answer(Image.new("RGB", (200, 150)), Q,
                                                                  targets=["zyxwv"])
    assert any("unknown to the model's vocabulary" in n and "meaningless" in n for n in tr.notes)


# ------------------------------------------------------------------------------------------------
# notebooks


def test_notebook_parameters_are_type_checked():
    """papermill's `-p n_steps "[1, 2]"` hands the notebook a string; the first cell must refuse it."""
    from papermill.cli import _resolve_type

    from focuslib.report import check_parameters
    given = _resolve_type("[1, 2]")
    assert given == "[1, 2]"  # what papermill really passes
    with pytest.raises(TypeError, match=r'n_steps must be a list of int.*-y "n_steps: \[1, 2\]"'):
        check_parameters({"n_steps": given})
    with pytest.raises(TypeError, match="limit must be int or None"):
        check_parameters({"limit": "50x"})
    with pytest.raises(TypeError, match="smoke must be bool"):
        check_parameters({"smoke": "yes"})
    check_parameters({"n_steps": [1, 2], "limit": None, "nms_values": [0.1, 0.3], "smoke": False, "model": "tiny",
                      "unrelated": object()})


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_is_refused_before_the_model_loads(tiny_llava_path, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    rc, _, err = run(["eval", "--model", "nosuchmodel", "--benchmark", "vstar", "--out", ro / "x"], capsys)
    assert rc == 2 and "cannot write results under" in err  # before the (here unknown) model is even looked at


def test_large_image_limit_can_be_raised(files, monkeypatch):
    from focuslib.images import FocusInputError, load_image
    big = bomb_png(files / "big.png", 20000, 10000)  # 200 Mpx: over PIL's default 179 Mpx
    with pytest.raises(FocusInputError, match="FOCUSLIB_MAX_IMAGE_PIXELS=200000000"):
        load_image(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv("FOCUSLIB_MAX_IMAGE_PIXELS", "200000000")
    with pytest.raises(FocusInputError, match="corrupt or truncated"):  # past the guard: the header lies
        load_image(big)


def test_large_image_as_benchmark_bytes_gets_the_same_guard(files, monkeypatch):
    """Benchmark records hold encoded bytes (HR-Bench base64, MME-RW bytes): same message, same override."""
    from focuslib.eval.benchmarks import decode_image
    from focuslib.images import FocusInputError
    data = bomb_png(files / "big_bytes.png", 20000, 10000).read_bytes()
    with pytest.raises(FocusInputError, match=r"20000x10000 = 200 Mpx.*FOCUSLIB_MAX_IMAGE_PIXELS=200000000"):
        decode_image(data, files)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv("FOCUSLIB_MAX_IMAGE_PIXELS", "200000000")
    with pytest.raises(FocusInputError, match="corrupt or truncated"):  # past the guard: the header lies
        decode_image(data, files)
    with pytest.raises(FocusInputError, match="not a readable image file: <4 bytes of image data>"):
        decode_image(b"junk", files)


def test_results_of_other_weights_under_the_same_name_are_not_resumed(tiny_llava_path, vstar_dir, tmp_path):
    """A checkpoint retrained into the same folder keeps its name; its results must not be mixed with the old
    weights' records (the shipped miniature's smoke figures once were). The fingerprint follows the content."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from focuslib.models import load_mllm, weights_fingerprint
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_llava_path, ckpt)
    first = weights_fingerprint(str(ckpt))
    assert first and first.startswith("sha256:")
    shutil.copytree(tiny_llava_path, tmp_path / "copy")   # same bytes elsewhere: same weights
    assert weights_fingerprint(str(tmp_path / "copy")) == first
    src, out = vstar_dir, tmp_path / "out"
    mllm = load_mllm(str(ckpt), device="cpu")
    assert mllm.weights_id == first
    _eval(mllm, src, out, limit=2)
    meta = next(out.glob("*.meta.json"))
    assert json.loads(meta.read_text())["weights"] == first
    # "retrain": one tensor changes, the folder and the name stay
    f = next(ckpt.glob("*.safetensors"))
    t = load_file(str(f))
    k = sorted(t)[len(t) // 2]
    t[k] = (t[k] + np.ones_like(t[k])).astype(t[k].dtype)
    save_file(t, str(f), metadata={"format": "pt"})
    assert weights_fingerprint(str(ckpt)) != first
    with pytest.raises(RunError, match="written by other weights under the same model name"):
        _eval(load_mllm(str(ckpt), device="cpu"), src, out, limit=2)
    # a results folder written before runs recorded weights resumes as before
    m = json.loads(meta.read_text())
    del m["weights"]
    meta.write_text(json.dumps(m))
    assert len(_eval(load_mllm(str(ckpt), device="cpu"), src, out, limit=2)["records"]) == 2


def test_weights_fingerprint_of_a_large_file_samples_it(tmp_path):
    """Above 64 MiB the fingerprint reads 18 MiB (start, end, 16 points between), so a 7B checkpoint costs no
    minute to load; a change at the start or the end of a shard still changes it, as does another size."""
    from focuslib.models import weights_fingerprint
    f = tmp_path / "model-00001-of-00002.safetensors"
    size = 65 << 20
    data = bytearray(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    f.write_bytes(data)
    first = weights_fingerprint(str(tmp_path))
    for pos in (10, size - 10):
        changed = bytearray(data)
        changed[pos] ^= 0xFF
        f.write_bytes(changed)
        assert weights_fingerprint(str(tmp_path)) != first
    f.write_bytes(data + b"\0")
    assert weights_fingerprint(str(tmp_path)) != first
    f.write_bytes(data)
    assert weights_fingerprint(str(tmp_path)) == first
    assert weights_fingerprint(str(tmp_path / "none")) is None   # neither a folder nor a hub config
