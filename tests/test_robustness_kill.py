"""Issue 14, interrupted runs as a user has them: `focus eval` SIGKILLed at random moments and resumed, and a
two-process CPU run (torchrun, the README's command) whose launcher is killed. Real processes, tiny model."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from focuslib.eval.runner import read_records

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
       "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
N = 10


def _eval_args(model, out, limit=N):
    return ["-m", "focuslib.cli", "eval", "--model", str(model), "--benchmark", "vstar", "--method", "vanilla",
            "--data", "synthetic", "--synthetic-size", "160", "--limit", str(limit), "--out", str(out),
            "--device", "cpu", "--no-progress"]


def _results(out):
    return next(Path(out).glob("vstar__*__vanilla__generate.jsonl"), None)


def _n_lines(out):
    p = _results(out)
    return sum(1 for _ in read_records(p)) if p else 0


def _summary(stdout):
    """The printed per-category table without the timing columns."""
    rows = [ln.split() for ln in stdout.splitlines() if ln.startswith(("overall", "category="))]
    return [r[:5] for r in rows]  # group, n, acc, acc_lenient, errors


def test_sigkill_twice_then_resume_equals_an_uninterrupted_run(tiny_llava_path, tmp_path, capsys):
    rng = random.Random(14)
    out = tmp_path / "killed"
    for attempt in range(2):  # SIGKILL at a random moment: start-up, data generation or mid-run
        p = subprocess.Popen([sys.executable, *_eval_args(tiny_llava_path, out)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = _n_lines(out)
        deadline = time.time() + 120
        wait_records = rng.randint(0, 3)  # kill after 0..3 new records, plus a random fraction of a second
        while time.time() < deadline and p.poll() is None and _n_lines(out) < before + wait_records:
            time.sleep(0.05)
        time.sleep(rng.random() * 0.5)
        p.send_signal(signal.SIGKILL)
        p.wait()
    resumed = subprocess.run([sys.executable, *_eval_args(tiny_llava_path, out)], env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["id"] for r in read_records(_results(out))]
    assert sorted(ids) == sorted(str(i) for i in range(N))  # every id exactly once
    from focuslib.cli import main  # the uninterrupted run, in this process (saves a start-up)
    assert main(_eval_args(tiny_llava_path, tmp_path / "clean")[2:]) == 0
    clean = capsys.readouterr().out
    assert _summary(resumed.stdout) == _summary(clean) and _summary(clean)


def _torchrun(model, out, limit):
    port = str(29500 + os.getpid() % 400)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
            *_eval_args(model, out, limit)]


def test_two_process_cpu_run_and_killed_launcher(tiny_llava_path, tmp_path):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "sharded"
    # 1) the launcher is SIGKILLed mid-run: its workers must stop too (they would go on appending)
    launcher = subprocess.Popen(_torchrun(tiny_llava_path, out, 40), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not list(out.glob("*.shard*of2.jsonl")):
        time.sleep(0.1)
    workers = psutil.Process(launcher.pid).children(recursive=True)
    assert len(workers) >= 2, "torchrun did not start two workers"
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers outlived their launcher: {alive}"
    # 2) the same command again finishes the run: one merged file, every id once, one table (rank 0)
    done = subprocess.run(_torchrun(tiny_llava_path, out, 12), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [r["id"] for r in read_records(_results(out))]
    # every id once: the 12 asked for, plus whatever the killed --limit 40 run had already finished (its
    # workers may get further than 12 before the kill, depending on the machine's load; those records are kept)
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {str(i) for i in range(12)} <= set(ids) and all(int(i) < 40 for i in ids), sorted(ids)
    assert not list(out.glob("*.shard*of2.jsonl"))
    assert done.stdout.count("\noverall") + done.stdout.startswith("overall") == 1  # rank 1 prints no table
