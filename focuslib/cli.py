"""Command line: `focus ask` (one question about one image), `focus demo` (the embedded default) and
`focus eval` (a method over a benchmark, focuslib.runner)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("FOCUSLIB_CACHE", Path(__file__).resolve().parent.parent / ".cache"))


SHIPPED_MINIATURE = Path(__file__).resolve().parent.parent / "data" / "models" / "miniature-llava-1.5"


def embedded_default() -> tuple[str, str | None]:
    """Path of the embedded default model and a warning to print with it (None if none is due).

    A miniature LLaVA-1.5 trained by `make miniature` becomes the default once it is shipped in
    data/models/miniature-llava-1.5 (issue 7: attempt 1 is shipped; it answers at chance, see its card);
    without it the random-weight tiny LLaVA-1.5 is built offline, and the warning says its answers are noise."""
    if (SHIPPED_MINIATURE / "config.json").exists():
        return str(SHIPPED_MINIATURE), None
    from .tiny import TINY_LLAVA_NOTE
    return random_tiny(), TINY_LLAVA_NOTE


def random_tiny() -> str:
    """The random-weight tiny LLaVA-1.5 (built offline on first use): mechanics only."""
    from .tiny import build_tiny_llava
    path = DEFAULT_CACHE / "tiny-llava-1.5"
    if not (path / "config.json").exists():
        print(f"building the tiny random-weight LLaVA-1.5 at {path} (offline, ~2 s) ...", file=sys.stderr)
        build_tiny_llava(path)
    return str(path)


def _quiet():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _print_trace(tr, out=None):
    p = lambda *a: print(*a, file=out or sys.stdout)  # noqa: E731
    p(f"answer:       {tr.answer!r}")
    p(f"targets:      {tr.targets} (type-{tr.qtype}, from {tr.target_source})")
    for t in tr.per_target:
        if t.best is not None:
            r = t.rois[t.best]
            conf = "not verified" if r.confidence is None else f"c_yes={r.confidence:+.3f}"
            p(f"  {t.target!r}: best ROI #{t.best} box={r.box} anchor relevance={r.score:.4f} {conf}; "
              f"{len(t.verified)} of {len(t.rois)} proposals verified")
    p(f"final input:  {tr.final_mode} {tr.final_size[0]}x{tr.final_size[1]} from boxes {tr.chosen_boxes}")
    p(f"forward passes: search={tr.search_fp} (paper's count) | all model calls={tr.model_calls}")
    p("time [s]:     " + ", ".join(f"{k}={v:.3f}" for k, v in tr.timings.items()))
    for n in tr.notes:
        p(f"note:         {n}")


def cmd_ask(a) -> int:
    _quiet()
    from .config import preset
    from .images import FocusInputError, load_image
    from .models import load_mllm
    from .search import Focus
    from .tiny import model_note
    try:
        image = load_image(a.image)
    except FocusInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = a.model
    note = model_note(model) if os.path.isdir(model) else None
    mllm = load_mllm(model, device=a.device, dtype=a.dtype)
    over = {} if a.overrun is None else {"overrun": a.overrun}
    cfg = preset(mllm.family, a.benchmark, n_steps=a.n_steps, **over)
    if a.layers:
        cfg = cfg.__class__(**{**cfg.__dict__, "layers": tuple(a.layers)})
    print(f"model: {mllm.name} ({mllm.family}, {mllm.num_layers} layers, {mllm.device})")
    if note:
        print(f"WARNING: {note}")
    tr = Focus(mllm, cfg).answer(image, a.question, targets=a.targets)
    _print_trace(tr)
    if a.viz:
        from .viz import plot_trace
        plot_trace(tr, image, a.viz)
        print(f"visualization: {a.viz}")
    if a.json:
        Path(a.json).write_text(json.dumps(tr.summary(), indent=1))
    return 0


def cmd_demo(a) -> int:
    _quiet()
    from . import synthetic
    from .config import preset
    from .models import load_mllm
    from .rois import box_iou
    from .search import Focus
    from .tiny import model_note
    from .viz import plot_trace
    path, note = (a.model, None) if a.model else embedded_default()
    mllm = load_mllm(path, device=a.device, dtype=a.dtype)
    print(f"model: {path} ({mllm.family}, {mllm.num_layers} layers)")
    if note:
        print(f"WARNING: {note}. This demo shows the mechanics, not the accuracy.")
    else:
        print(f"note: {model_note(path) or 'no focuslib note'}")
    item = synthetic.generate(1, seed=a.seed)[0]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    item.image.save(out / "demo_image.jpg")
    print(f"image: {out / 'demo_image.jpg'} {item.image.size[0]}x{item.image.size[1]} (synthetic, seed {a.seed})")
    print(f"question: {item.question}  options: {item.options}  label: {item.label}")
    f = Focus(mllm, preset(mllm.family, "vstar", n_steps=a.n_steps))
    tr = f.answer(item.image, item.text)
    _print_trace(tr)
    gt = item.bboxes[0]
    gt_box = (gt[0], gt[1], gt[0] + gt[2], gt[1] + gt[3])
    hit = any(box_iou(gt_box, b) > 0 for b in tr.chosen_boxes)
    print(f"ground truth: label {item.label}, box {gt_box}; chosen crop overlaps it: {hit}; "
          f"answer correct: {tr.answer == item.label}")
    print(f"vanilla (whole image) answer: {f.vanilla(item.image, item.text)!r}")
    plot_trace(tr, item.image, out / "demo_focus.png")
    (out / "demo_trace.json").write_text(json.dumps(tr.summary(), indent=1))
    print(f"visualization: {out / 'demo_focus.png'}  trace: {out / 'demo_trace.json'}")
    return 0


def cmd_eval(a) -> int:
    """`focus eval`: a method over a benchmark, one JSON line per sample, resumable (focuslib.runner)."""
    _quiet()
    from .benchmarks import BenchmarkError, get_spec
    from .models import load_mllm
    from .runner import evaluate, shard_info
    spec = get_spec(a.benchmark)
    source = a.data
    rank, world = shard_info()
    if a.data == "synthetic":
        from .synthetic_benchmarks import write_synthetic
        source = Path(a.out) / "_data" / spec.name
        if rank == 0 and not source.exists():
            write_synthetic(spec.name, source, n=a.synthetic_n, size=(a.synthetic_size, a.synthetic_size * 3 // 4))
        if world > 1:
            from .runner import barrier
            barrier()
        print(f"synthetic {spec.name} benchmark (offline, schema of {spec.hub_id}) at {source}")
    model = (embedded_default()[0] if a.model == "tiny" else random_tiny() if a.model == "random-tiny" else a.model)
    device = a.device
    if world > 1 and device is None:
        from accelerate import PartialState
        device = str(PartialState().device)  # one GPU per process
    attn = "sdpa"
    if a.method.startswith("vicrop"):  # ViCrop reads attention weights: eager attention only
        attn = "eager"
        print("ViCrop needs attention weights: loading the model with attn_implementation='eager'")
    mllm = load_mllm(model, device=device, dtype=a.dtype, attn_implementation=attn)
    baseline_options = {"depth": a.depth, "children": a.children, "high": a.high}
    judge = None
    if a.judge:
        from .schemes import LLMJudge
        judge = LLMJudge.from_pretrained(a.judge, device=device)
    try:
        evaluate(mllm, spec, a.method, a.n_steps, a.limit, a.out, source=source, scheme=a.scheme,
                 map_variant=a.map, ranking=not a.no_ranking, layers=a.layers, overrun=a.overrun,
                 gt_targets=a.gt_targets, reuse_permutations=a.reuse_permutations, flops=a.flops, judge=judge,
                 retry_errors=a.retry_errors, progress=not a.no_progress,
                 baseline_options=baseline_options if a.method not in ("vanilla", "focus") else None)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="focus", description="FOCUS fine-grained VQA (NeurIPS 2025) with HF MLLMs")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
        p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
        p.add_argument("--n-steps", type=int, default=8)

    ask = sub.add_parser("ask", help="answer one question about one image")
    ask.add_argument("--model", required=True, help="hub id (e.g. llava-hf/llava-1.5-7b-hf) or local path")
    ask.add_argument("--image", required=True)
    ask.add_argument("--question", required=True)
    ask.add_argument("--targets", nargs="+", default=None, help="skip extraction ('all X' marks type-2)")
    ask.add_argument("--benchmark", default=None, help="preset variant, e.g. vstar (Tab. 7)")
    ask.add_argument("--overrun", dest="overrun", action="store_true", default=None)
    ask.add_argument("--no-overrun", dest="overrun", action="store_false")
    ask.add_argument("--layers", nargs=2, type=int, default=None, metavar=("L0", "L1"),
                     help="half-open layer range of a model with the preset's depth")
    ask.add_argument("--viz", default=None, help="write a PNG of maps, ROIs and final input")
    ask.add_argument("--json", default=None, help="write the trace summary as JSON")
    common(ask)
    ask.set_defaults(func=cmd_ask)

    demo = sub.add_parser("demo", help="FOCUS on the embedded default model and a synthetic image")
    demo.add_argument("--model", default=None, help="use this model instead of the embedded default")
    demo.add_argument("--out", default="figures/demo")
    demo.add_argument("--seed", type=int, default=0)
    common(demo)
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="evaluate a method on a benchmark (resumable JSONL, per-category table)")
    ev.add_argument("--model", required=True, help="hub id, local path, 'tiny' (the embedded default) or 'random-tiny'")
    ev.add_argument("--benchmark", required=True, help="vstar, hrbench_4k, hrbench_8k, mme_rw_lite, aokvqa, gqa")
    ev.add_argument("--method", default="focus", choices=["vanilla", "focus", "zoomeye", "vicrop-rel", "vicrop-grad"])
    ev.add_argument("--depth", type=int, default=None, help="zoomeye: max tree depth (A.4: 1, 2, 5; default 5)")
    ev.add_argument("--children", type=int, default=None, choices=[2, 4], help="zoomeye: sub-regions per node")
    ev.add_argument("--high", dest="high", action="store_true", default=None,
                    help="vicrop: tile high-resolution images into ~1024 px blocks (default)")
    ev.add_argument("--no-high", dest="high", action="store_false", help="vicrop: one map on the whole image")
    ev.add_argument("--limit", type=int, default=None, help="first K samples only")
    ev.add_argument("--out", default="runs", help="results directory (one JSONL per run, resumable)")
    ev.add_argument("--data", default=None, help="local copy of the benchmark (dir/file), or 'synthetic'; "
                                                 "default: the hub")
    ev.add_argument("--synthetic-n", type=int, default=8)
    ev.add_argument("--synthetic-size", type=int, default=320)
    ev.add_argument("--scheme", default="generate", choices=["generate", "logits", "open"],
                    help="open-ended with options (paper), logits matching (C.5), open-ended + judge (C.2)")
    ev.add_argument("--judge", default=None, help="judge LLM for --scheme open, e.g. Qwen/Qwen2.5-7B-Instruct")
    ev.add_argument("--map", default=None, choices=["vv", "kk", "random"], help="relevance map ablation")
    ev.add_argument("--no-ranking", action="store_true", help="ablation: answer on the top-relevance ROI")
    ev.add_argument("--layers", nargs=2, type=int, default=None, metavar=("l", "L"))
    ev.add_argument("--overrun", dest="overrun", action="store_true", default=None)
    ev.add_argument("--no-overrun", dest="overrun", action="store_false")
    ev.add_argument("--gt-targets", action="store_true", help="give FOCUS V*Bench's GT target objects")
    ev.add_argument("--reuse-permutations", action="store_true",
                    help="HR-Bench: share the search across the 4 option permutations (reported separately)")
    ev.add_argument("--flops", action="store_true", help="measure FLOPs with FlopCounterMode (slow)")
    ev.add_argument("--retry-errors", action="store_true", help="rerun samples recorded as errors")
    ev.add_argument("--no-progress", action="store_true")
    common(ev)
    ev.set_defaults(func=cmd_eval)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
