"""`focus doctor`: will a real run work on this machine? Answers in minutes, before hours are spent.

Checks, in order, each a row of one table (ok / warn / problem / skip, with the exact fix for a problem, the
step's time and the peak memory after it):

  torch / transformers versions, CUDA and the GPU, bf16, attention kernels (SDPA, flash-attn)
  per model: where it comes from (local folder, hub reachable, HF cache) and free GPU memory vs its needs
  per model: load it, then one question per benchmark present (`--data DIR` with one sub-folder per benchmark;
             a built-in synthetic V*-style question when none is): image, relevance map, ROIs, batched
             verification, answer, each timed

Without a GPU it says so (one `warn` row) and checks everything else on the CPU.
"""
from __future__ import annotations

import functools
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from focuslib.core.config import preset
from focuslib.core.search import Focus
from focuslib.eval.benchmarks import BENCHMARKS, get_spec, load_benchmark
from focuslib.models import (cached_snapshot, default_device, HUB_IDS, hub_reachable, load_mllm, resolve_dtype,
    resolve_source)
from focuslib.offline.synthetic_benchmarks import write_synthetic

# parameters (billions) of the hub checkpoints, for the memory check before anything is downloaded or loaded
PARAMS_B = {"llava-hf/llava-1.5-7b-hf": 7.06, "llava-hf/llava-onevision-qwen2-7b-ov-hf": 8.03,
            "Qwen/Qwen2.5-VL-7B-Instruct": 8.29}
HEADROOM_GB = 6.0   # activations of the largest relevance pass (HR-8K on Qwen2.5-VL: ~16k tokens) + CUDA context
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


@dataclass
class Check:
    name: str
    status: str            # ok | warn | problem | skip
    detail: str = ""
    fix: str = ""
    seconds: float | None = None
    peak_mb: float | None = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, *a, **k) -> Check:
        c = Check(*a, **k)
        self.checks.append(c)
        return c

    @property
    def ok(self) -> bool:
        return not any(c.status == "problem" for c in self.checks)

    def table(self) -> str:
        rows = [("check", "status", "time", "peak mem", "detail / fix")]
        for c in self.checks:
            text = c.detail + (f"\n  -> fix: {c.fix}" if c.fix else "")
            rows.append((c.name, c.status.upper() if c.status == "problem" else c.status,
                         "" if c.seconds is None else f"{c.seconds:.2f}s",
                         "" if c.peak_mb is None else f"{c.peak_mb:,.0f} MB", text))
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        out = []
        for r in rows:
            lines = r[4].split("\n")
            out.append("  ".join(r[i].ljust(w[i]) for i in range(4)) + "  " + lines[0])
            out += [" " * (sum(w) + 8) + x for x in lines[1:]]
        verdict = "ready: a real run should work" if self.ok else \
            f"{sum(c.status == 'problem' for c in self.checks)} problem(s): fix them first (see -> fix)"
        return "\n".join(out) + f"\n\n{verdict}"


def peak_mb(device: str) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak RSS on the CPU."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


# ---- environment ------------------------------------------------------------------------------------------------
def check_environment(rep: Report, device: str) -> None:
    import transformers
    rep.add("python / torch / transformers", "ok",
            f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    if not torch.cuda.is_available():
        rep.add("GPU", "warn", "no CUDA GPU visible: everything else is checked on the CPU, but a 7B model on the "
                "CPU takes minutes per question",
                fix="run on a GPU node (CUDA torch: `conda env create -f environment.yml`)")
    else:
        props = torch.cuda.get_device_properties(0)
        rep.add("GPU", "ok", f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2 ** 30:.0f} GiB), "
                f"CUDA {torch.version.cuda}")
        if torch.cuda.is_bf16_supported():
            rep.add("bf16", "ok", "supported (the default dtype on GPU)")
        else:
            rep.add("bf16", "problem", f"{props.name} has no bf16", fix="pass --dtype float16")
    sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    rep.add("attention: SDPA", "ok" if sdpa else "problem", "torch SDPA available (FOCUS never needs attention "
            "weights)" if sdpa else "torch has no scaled_dot_product_attention", fix="" if sdpa else "torch >= 2.6")
    try:
        import flash_attn  # noqa: F401
        rep.add("attention: flash-attn", "ok", f"flash_attn {getattr(flash_attn, '__version__', '?')} importable")
    except Exception:
        rep.add("attention: flash-attn", "skip", "not installed; SDPA is used (same results, a little slower)")


# ---- one model --------------------------------------------------------------------------------------------------
def model_needs_gb(name: str, dtype: torch.dtype) -> float | None:
    """Weights at `dtype` + headroom; from the local safetensors when given a folder, else the known sizes."""
    if os.path.isdir(name):
        files = list(Path(name).glob("*.safetensors"))
        if not files:
            return None
        from safetensors import safe_open
        n = 0
        for f in files:
            with safe_open(str(f), "pt") as st:
                n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
        weights = n * DTYPE_BYTES.get(dtype, 2) / 2 ** 30
        return weights + (HEADROOM_GB if weights > 1 else 0.1)
    b = PARAMS_B.get(name)
    return None if b is None else b * 1e9 * DTYPE_BYTES.get(dtype, 2) / 2 ** 30 + HEADROOM_GB


def check_source(rep: Report, name: str) -> bool:
    """Local folder / hub reachability / HF cache; False when the model cannot be had."""
    t0 = time.perf_counter()
    try:
        resolved, kw = resolve_source(name)
    except RuntimeError as e:
        msg = str(e)
        fix = msg[msg.find("On a connected"):] if "On a connected" in msg else "give an existing checkpoint folder"
        rep.add(f"{name}: source", "problem", msg.split(". On a connected")[0], fix=fix,
                seconds=time.perf_counter() - t0)
        return False
    if os.path.isdir(resolved):
        detail = f"local folder {resolved}"
    elif kw.get("local_files_only"):
        detail = f"hub unreachable, using the HF cache ({cached_snapshot(resolved)})"
    else:
        ok, why = hub_reachable()
        snap = cached_snapshot(resolved)
        detail = f"hub reachable ({why}); " + (f"cached at {snap}" if snap else "not cached yet: the first load "
                                                                                 "downloads ~15 GB")
    rep.add(f"{name}: source", "ok", detail, seconds=time.perf_counter() - t0)
    return True


def check_memory(rep: Report, name: str, device: str, dtype: torch.dtype) -> None:
    need = model_needs_gb(name, dtype)
    if not str(device).startswith("cuda"):
        rep.add(f"{name}: memory", "skip", f"needs ~{need:.1f} GB at {dtype}; no GPU to compare with"
                if need else "no GPU to compare with")
        return
    free, total = torch.cuda.mem_get_info()
    free_gb = free / 2 ** 30
    if need is None:
        rep.add(f"{name}: memory", "skip", f"{free_gb:.1f} GiB free; size of this checkpoint unknown")
    elif free_gb >= need:
        rep.add(f"{name}: memory", "ok", f"{free_gb:.1f} GiB free >= ~{need:.1f} GiB needed at {dtype}")
    else:
        rep.add(f"{name}: memory", "problem", f"{free_gb:.1f} GiB free < ~{need:.1f} GiB needed at {dtype}",
                fix="a GPU with more free memory (other processes? `nvidia-smi`), or --dtype bfloat16")


def doctor_samples(data: str | None, limit_per_benchmark: int = 1):
    """[(benchmark name, sample)]: one per benchmark present under `data` (sub-folder named like the
    benchmark), or one built-in synthetic V*-style question."""
    out, errors = [], []
    if data:
        root = Path(data)
        for name in BENCHMARKS:
            src = root / name
            if src.exists():
                try:
                    out += [(name, s) for s in load_benchmark(name, source=src, limit=limit_per_benchmark)]
                except Exception as e:   # reported as its own row
                    errors.append((name, f"{e.__class__.__name__}: {str(e).splitlines()[0]}"))
    if not out and not errors:
        tmp = Path(tempfile.mkdtemp(prefix="focus-doctor-"))
        write_synthetic("vstar", tmp / "vstar", n=1)
        out = [("synthetic", s) for s in load_benchmark("vstar", source=tmp / "vstar", limit=1)]
    return out, errors


def check_model(rep: Report, name: str, device: str, dtype, load_samples: Callable[[], tuple[list, list]],
                n_steps: int = 2) -> None:
    """Source, memory, load, then the test question(s) of `load_samples()` (`doctor_samples`, read once per run)."""
    dt = resolve_dtype(dtype, device)
    if not check_source(rep, name):
        return
    check_memory(rep, name, device, dt)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        m = load_mllm(name, device=device, dtype=dt)
    except Exception as e:
        rep.add(f"{name}: load", "problem", f"{e.__class__.__name__}: {str(e).splitlines()[0]}",
                fix="see the message; `focus --debug doctor ...` shows the traceback", seconds=time.perf_counter() - t0)
        return
    rep.add(f"{name}: load", "ok", f"{m.family}, {m.num_layers} decoder layers, {dt}, {device}"
            + (f"; fixed an old processor config: {', '.join(m.processor_fixes)}" if getattr(m, "processor_fixes", None)
               else ""), seconds=time.perf_counter() - t0, peak_mb=peak_mb(device))
    samples, errors = load_samples()
    for bench, err in errors:
        rep.add(f"{name}: {bench}", "problem", f"cannot read the local copy: {err}",
                fix=f"re-download it (`focus eval --benchmark {bench} --data DIR` expects the hub layout)")
    for bench, s in samples:
        t0 = time.perf_counter()
        try:
            image = s.image()
            t_img = time.perf_counter() - t0
            f = Focus(m, preset(m.family, get_spec(s.benchmark).preset, n_steps=n_steps))
            tr = f.answer(image, s.question, answer_prompt=s.prompt)
        except Exception as e:
            rep.add(f"{name}: {bench}", "problem", f"{e.__class__.__name__}: {str(e).splitlines()[0]}",
                    fix="see the message; `focus --debug doctor ...` shows the traceback",
                    seconds=time.perf_counter() - t0, peak_mb=peak_mb(device))
            continue
        t = tr.timings
        steps = (f"image {t_img:.2f}s, targets {t.get('targets', 0):.2f}s, map {t.get('relevance', 0):.2f}s, "
                 f"ROIs {t.get('proposals', 0):.2f}s, verify {t.get('verify', 0):.2f}s "
                 f"({tr.model_calls.get('verify', 0)} batched forwards), answer {t.get('answer', 0):.2f}s")
        rep.add(f"{name}: {bench}", "ok", f"{s.id}: {steps}; answer {tr.answer!r} (gt {s.answer!r}), "
                f"{len(tr.per_target[0].rois) if tr.per_target else 0} ROIs on a "
                f"{tuple(tr.per_target[0].map.shape) if tr.per_target else '-'} map",
                seconds=time.perf_counter() - t0, peak_mb=peak_mb(device))
    del m
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def run_doctor(models: list[str], device: str | None = None, dtype="auto", data: str | None = None,
               n_steps: int = 2) -> Report:
    device = device or default_device()
    rep = Report()
    check_environment(rep, device)
    load_samples = functools.cache(lambda: doctor_samples(data))  # the same questions for every model, read once
    for name in models:
        check_model(rep, name, device, dtype, load_samples, n_steps=n_steps)
    return rep


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="focus doctor", description=__doc__.split("\n")[0])
    add_arguments(ap)
    a = ap.parse_args(argv)
    return cmd_doctor(a)


def add_arguments(ap) -> None:
    import argparse

    ap.add_argument("--model", default="all", help=f"alias ({', '.join(HUB_IDS)}), hub id, local folder, or 'all' "
                                                   "(the three paper models)")
    ap.add_argument("--data", default=None, help="folder with one sub-folder per benchmark (vstar, hrbench_4k, "
                                                 "...); None: one synthetic question")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (None: cuda if available)")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32")
    ap.add_argument("--n-steps", type=int, default=2, help="FOCUS budget of the test question")
    ap.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="show the Python traceback of an error")


def cmd_doctor(a) -> int:
    models = list(HUB_IDS.values()) if a.model == "all" else [a.model]
    rep = run_doctor(models, device=a.device, dtype=a.dtype, data=a.data, n_steps=a.n_steps)
    print(rep.table())
    sys.stdout.flush()
    return 0 if rep.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
