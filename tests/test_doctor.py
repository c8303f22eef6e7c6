"""`focus doctor` on the mini-real checkpoints (no GPU here: it says so and checks the rest)."""
import pytest
import torch

from focuslib.cli import main
from focuslib.doctor import run_doctor
from focuslib.offline.synthetic_benchmarks import write_synthetic


def _rows(rep):
    return {c.name: c for c in rep.checks}


def test_doctor_on_mini_real_llava_with_two_benchmarks_present(mini_llava_path, tmp_path):
    data = tmp_path / "data"
    write_synthetic("vstar", data / "vstar", n=2)
    write_synthetic("gqa", data / "gqa", n=2)
    rep = run_doctor([str(mini_llava_path)], device="cpu", dtype="float32", data=str(data))
    rows = _rows(rep)
    name = str(mini_llava_path)
    if not torch.cuda.is_available():
        assert rows["GPU"].status == "warn" and "no CUDA GPU" in rows["GPU"].detail and rows["GPU"].fix
    assert rows["attention: SDPA"].status == "ok"
    assert rows[f"{name}: source"].status == "ok" and "local folder" in rows[f"{name}: source"].detail
    assert rows[f"{name}: load"].status == "ok" and rows[f"{name}: load"].seconds > 0
    for bench in ("vstar", "gqa"):   # one question per benchmark present, each step timed
        r = rows[f"{name}: {bench}"]
        assert r.status == "ok", r.detail
        for step in ("image", "targets", "map", "ROIs", "verify", "answer"):
            assert f"{step} " in r.detail
        assert "batched forwards" in r.detail and r.peak_mb > 0
    assert f"{name}: aokvqa" not in rows          # absent benchmarks are not run
    assert rep.ok and "ready" in rep.table()


@pytest.mark.parametrize("fixture", ["mini_ov_path", "mini_qwen_path"])
def test_doctor_cli_on_the_global_local_families(fixture, request, capsys):
    path = str(request.getfixturevalue(fixture))
    rc = main(["doctor", "--model", path, "--device", "cpu", "--dtype", "float32", "--n-steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"{path}: synthetic" in out and "ok" in out and "ready: a real run should work" in out


def test_doctor_reports_a_missing_model_with_the_fix(tmp_path, capsys):
    rc = main(["doctor", "--model", str(tmp_path / "no-such-model"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "PROBLEM" in out and "does not exist" in out and "hf download" not in out
    assert "1 problem(s)" in out


def test_doctor_offline_hub_id_says_hf_download(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    rc = main(["doctor", "--model", "qwen2.5-vl-7b", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1 and "hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir DIR" in out
    assert "HF_HUB_OFFLINE" in out
