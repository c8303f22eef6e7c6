"""Command line: `focus ask` (one question about one image), `focus demo` (the embedded default) and
`focus eval` (a method over a benchmark, focuslib.eval.runner)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from focuslib.core.config import preset
from focuslib.core.rois import box_iou
from focuslib.core.search import Focus
from focuslib.doctor import add_arguments as doctor_arguments, cmd_doctor
from focuslib.eval.baselines import BASELINE_METHODS
from focuslib.eval.benchmarks import BenchmarkError, BENCHMARKS, get_spec
from focuslib.eval.runner import barrier, check_writable, evaluate, exit_with_parent, METHODS, SCHEMES, shard_info
from focuslib.eval.schemes import LLMJudge
from focuslib.images import FocusInputError, load_image
from focuslib.models import load_mllm
from focuslib.offline import embedded, synthetic
from focuslib.offline.synthetic_benchmarks import default_n, ensure_synthetic
from focuslib.offline.tiny import model_note
from focuslib.report.plots import plot_trace

# ------------------------------------------------------------------------------------------------
# checks of user input: each failure is one line naming what is wrong and what to do (exit code 2)

DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
USER_ERRORS = (FocusInputError, BenchmarkError)   # one-line messages, exit code 2


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a negative --limit would slice from the end, 0 would do nothing)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def check_device(device: str | None) -> str | None:
    """None (auto), cpu, cuda, cuda:N or mps, and only a device torch can use."""
    if device is None:
        return None
    kind, _, idx = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (idx and not idx.isdigit()) or (kind == "cpu" and idx):
        raise FocusInputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps (default: cuda if available)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise FocusInputError(f"--device {device}: torch sees no CUDA GPU (torch {torch.__version__}); use --device cpu")
        if idx and int(idx) >= torch.cuda.device_count():
            raise FocusInputError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise FocusInputError("--device mps: MPS is not available here; use --device cpu")
    return device


def load_model(arg: str, device: str | None, dtype: str, **kw):
    """embedded.resolve_model + check_device + load_mllm, with loading failures turned into one-line errors."""
    path = embedded.resolve_model(arg)
    device = check_device(device)
    try:
        return load_mllm(path, device=device, dtype=dtype, **kw), path
    except (OSError, ValueError, RuntimeError) as e:
        if isinstance(e, USER_ERRORS):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FocusInputError(first if arg in first or path in first else f"cannot load model {arg!r}: {first}") from e


def check_text(mllm, text: str, what: str) -> None:
    """A question or target must not contain the model's special tokens (e.g. <image>): they would be
    read as image slots or control tokens."""
    tok = getattr(mllm, "tokenizer", None)
    special = set(getattr(tok, "all_special_tokens", []) or [])
    special |= {t.content if hasattr(t, "content") else str(t)
                for t in (getattr(tok, "added_tokens_decoder", {}) or {}).values()
                if getattr(t, "special", True)}
    found = sorted(t for t in special if t and len(t) > 1 and t in text)
    if found:
        raise FocusInputError(f"the {what} contains the model's special token(s) {found}; remove them (images are given "
                   "with --image)")


def check_out_file(path: str | None, option: str) -> None:
    """--json / --viz: fail before the run if the file cannot be written."""
    if not path:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    for q in (parent, *parent.parents):
        if q.exists():
            if not q.is_dir():
                raise FocusInputError(f"{option} {path}: {q} is a file, not a directory")
            if not os.access(q, os.W_OK):
                raise FocusInputError(f"{option} {path}: {q} is not writable")
            break
    if p.is_dir():
        raise FocusInputError(f"{option} {path} is a directory; give a file name")


def check_targets(targets: list[str] | None) -> list[str] | None:
    """--targets: non-empty names; 'all X' marks type-2 and needs the object X."""
    if targets is None:
        return None
    names = [" ".join(t.split()) for t in targets]
    if not any(names):
        raise FocusInputError("--targets got only empty names; give object names (e.g. --targets 'red car') or leave "
                   "--targets out to extract them from the question")
    for t in names:
        if t.lower() in ("all", "all of", "all of the", "all the"):
            raise FocusInputError(f"--targets {t!r} names no object; write 'all <object>' (e.g. 'all cars') for a "
                       "type-2 question")
    return [t for t in names if t]


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


def _inputs(a) -> dict:
    """Adapter input settings given on the command line (default: config.INPUTS, decisions D13)."""
    return {} if a.max_pixels is None else {"max_pixels": a.max_pixels}


def preset_group(benchmark: str | None) -> str | None:
    """`--benchmark` of `focus ask` -> its Tab. 7 preset group (eval.benchmarks resolves names and aliases);
    "synthetic" (the demo's V*-style images) takes V*Bench's."""
    if benchmark is None:
        return None
    if benchmark.lower() == "synthetic":
        return "vstar"
    try:
        return get_spec(benchmark).preset
    except BenchmarkError:
        raise FocusInputError(f"unknown --benchmark {benchmark!r} for the preset; known: {sorted(BENCHMARKS)} "
                              "and their aliases (v*, hrbench4k, ...)") from None


def cmd_ask(a) -> int:
    _quiet()
    group = preset_group(a.benchmark)
    if not a.question.strip():
        raise FocusInputError("the question is empty; ask something about the image, e.g. --question 'What color is the car?'")
    targets = check_targets(a.targets)
    check_device(a.device)
    check_out_file(a.json, "--json")
    check_out_file(a.viz, "--viz")
    image = load_image(a.image)
    mllm, model = load_model(a.model, a.device, a.dtype, **_inputs(a))
    note = model_note(model) if os.path.isdir(model) else None
    check_text(mllm, a.question, "question")
    for t in targets or []:
        check_text(mllm, t, f"target {t!r}")
    over = {} if a.overrun is None else {"overrun": a.overrun}
    if a.layers:
        over["layers"] = tuple(a.layers)
    cfg = preset(mllm.family, group, n_steps=a.n_steps, **over)
    layers = cfg.resolved_layers(mllm.num_layers)
    print(f"model: {mllm.name} ({mllm.family}, {mllm.num_layers} layers, {mllm.device}); "
          f"relevance layers [{layers.start}, {layers.stop})")
    if note:
        print(f"WARNING: {note}")
    tr = Focus(mllm, cfg).answer(image, a.question, targets=targets)
    _print_trace(tr)
    if a.viz:
        plot_trace(tr, image, a.viz)
        print(f"visualization: {a.viz}")
    if a.json:
        Path(a.json).write_text(json.dumps(tr.summary(), indent=1))
    return 0


def cmd_demo(a) -> int:
    _quiet()
    if a.model:
        mllm, path = load_model(a.model, a.device, a.dtype)
        note = None
    else:
        path, note = embedded.embedded_default()
        mllm, _ = load_model(path, a.device, a.dtype)
    print(f"model: {path} ({mllm.family}, {mllm.num_layers} layers)")
    if note:
        print(f"WARNING: {note}. This demo shows the mechanics, not the accuracy.")
    else:
        print(f"note: {model_note(path) or 'no focuslib note'}")
    item = synthetic.generate(1, seed=a.seed)[0]
    out = Path(a.out)
    check_writable(out)
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
    """`focus eval`: a method over a benchmark, one JSON line per sample, resumable (focuslib.eval.runner)."""
    _quiet()
    spec = get_spec(a.benchmark)
    rank, world = shard_info()
    if world > 1:
        exit_with_parent()  # a killed launcher takes its workers with it
    out = Path(a.out)
    check_writable(out)  # before the model loads, not after the whole run
    source, data_tag = a.data, None
    if a.data == "synthetic":
        if a.synthetic_size < 160:  # the synthetic scenes need room for background, targets and distractors
            raise FocusInputError(f"--synthetic-size {a.synthetic_size} is too small; use at least 160 (px)")
        n = a.synthetic_n or default_n(spec.name, a.limit)
        size = (a.synthetic_size, a.synthetic_size * 3 // 4)
        source = out / "_data" / spec.name
        if rank == 0:
            ensure_synthetic(spec.name, source, n=n, size=size)
        if world > 1:
            barrier()
        data_tag = f"synthetic {size[0]}x{size[1]} seed 0"  # n may grow: ids are prefix-stable
        if rank == 0:
            print(f"synthetic {spec.name} benchmark (offline, schema of {spec.hub_id}, {n} items) at {source}")
    elif a.data is not None:
        p = Path(a.data)
        if p.is_file() and p.suffix.lower() not in (".parquet", ".tsv", ".jsonl", ".json"):
            raise FocusInputError(f"--data {a.data} is a {p.suffix or 'plain'} file; give the benchmark's directory (as "
                       f"`hf download {spec.hub_id} --repo-type dataset --local-dir DIR` writes it), "
                       "a .parquet/.tsv/.jsonl file of it, or 'synthetic'")
    device = check_device(a.device)
    if world > 1 and device is None:
        from accelerate import PartialState
        device = str(PartialState().device)  # one GPU per process
    attn = "sdpa"
    if a.method.startswith("vicrop"):  # ViCrop reads attention weights: eager attention only
        attn = "eager"
        print("ViCrop needs attention weights: loading the model with attn_implementation='eager'")
    mllm, _ = load_model(a.model, device, a.dtype, attn_implementation=attn, **_inputs(a))
    baseline_options = {"depth": a.depth, "children": a.children, "high": a.high}
    judge = None
    if a.judge:
        judge = LLMJudge.from_pretrained(embedded.resolve_model(a.judge), device=device)
    evaluate(mllm, spec, a.method, a.n_steps, a.limit, out, source=source, scheme=a.scheme,
             map_variant=a.map, ranking=not a.no_ranking, layers=a.layers, overrun=a.overrun,
             gt_targets=a.gt_targets, reuse_permutations=a.reuse_permutations, flops=a.flops, judge=judge,
             retry_errors=a.retry_errors, progress=not a.no_progress and rank == 0, data_tag=data_tag,
             baseline_options=baseline_options if a.method in BASELINE_METHODS else None)
    return 0


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option that takes a value shows its default; flags are off unless given."""

    def _get_help_string(self, action):
        return action.help if action.nargs == 0 else super()._get_help_string(action)


MAX_PIXELS_HELP = ("Qwen2.5-VL only: smart_resize's pixel cap (default 12845056, the checkpoint's; the "
                   "preset is tuned for it, decisions D13)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="focus", description="FOCUS fine-grained VQA (NeurIPS 2025) with HF MLLMs")
    ap.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fmt = _DefaultsFormatter
    models = f"model aliases: {embedded.aliases_help()}; or a hub id (org/name) or a local checkpoint directory"

    def common(p):
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (None: cuda if available)")
        p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on GPU, fp32 on CPU")
        p.add_argument("--n-steps", type=positive_int, default=8, help="search budget n_steps (>= 1)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the Python traceback of an error")

    ask = sub.add_parser("ask", help="answer one question about one image", formatter_class=fmt, epilog=models)
    ask.add_argument("--model", required=True, help="alias, hub id or local checkpoint directory (see below)")
    ask.add_argument("--image", required=True, help="image file (any PIL format)")
    ask.add_argument("--question", required=True, help="the question, options included if any")
    ask.add_argument("--targets", nargs="+", default=None,
                     help="skip extraction: these target objects ('all X' marks type-2); None: extract")
    ask.add_argument("--benchmark", default=None,
                     help="preset variant of Tab. 7, e.g. vstar; None: the family's base preset")
    ask.add_argument("--overrun", dest="overrun", action="store_true", default=None,
                     help="allow the search to overrun n_steps (None: the preset's choice)")
    ask.add_argument("--no-overrun", dest="overrun", action="store_false", help="stop at n_steps exactly")
    ask.add_argument("--layers", nargs=2, type=int, default=None, metavar=("L0", "L1"),
                     help="half-open layer range [L0, L1) in the preset's numbering (scaled to the model's "
                          "depth); None: the preset's")
    ask.add_argument("--viz", default=None, help="write a PNG of maps, ROIs and final input")
    ask.add_argument("--json", default=None, help="write the trace summary as JSON")
    ask.add_argument("--max-pixels", type=int, default=None, help=MAX_PIXELS_HELP)
    common(ask)
    ask.set_defaults(func=cmd_ask)

    demo = sub.add_parser("demo", help="FOCUS on the embedded default model and a synthetic image",
                          formatter_class=fmt, epilog=models)
    demo.add_argument("--model", default=None, help="use this model instead of the embedded default")
    demo.add_argument("--out", default="figures/demo", help="folder for the image, figure and trace")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic image")
    common(demo)
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="evaluate a method on a benchmark (resumable JSONL, per-category table)",
                        formatter_class=fmt, epilog=models + ". Several processes: see the README (torchrun on "
                        "CPU, accelerate launch --multi_gpu on GPUs).")
    ev.add_argument("--model", required=True, help="alias, hub id or local checkpoint directory (see below)")
    ev.add_argument("--benchmark", required=True, help="vstar, hrbench_4k, hrbench_8k, mme_rw_lite, aokvqa, gqa")
    ev.add_argument("--method", default="focus", choices=list(METHODS),
                    help="the method to evaluate")
    ev.add_argument("--depth", type=int, default=None, help="zoomeye: max tree depth (A.4: 1, 2, 5; None: 5)")
    ev.add_argument("--children", type=int, default=None, choices=[2, 4],
                    help="zoomeye: sub-regions per node (None: the preset's)")
    ev.add_argument("--high", dest="high", action="store_true", default=None,
                    help="vicrop: tile high-resolution images into ~1024 px blocks (None: on)")
    ev.add_argument("--no-high", dest="high", action="store_false", help="vicrop: one map on the whole image")
    ev.add_argument("--limit", type=positive_int, default=None, help="first K samples only (None: all)")
    ev.add_argument("--out", default="runs", help="results directory (one JSONL per run, resumable)")
    ev.add_argument("--data", default=None, help="local copy of the benchmark (dir/file), or 'synthetic'; "
                                                 "None: the hub")
    ev.add_argument("--synthetic-n", type=positive_int, default=None,
                    help="items of --data synthetic (None: enough for --limit, at least 8)")
    ev.add_argument("--synthetic-size", type=positive_int, default=320, help="width of synthetic images [px], >= 160")
    ev.add_argument("--scheme", default="generate", choices=list(SCHEMES),
                    help="open-ended with options (paper), logits matching (C.5), open-ended + judge (C.2)")
    ev.add_argument("--judge", default=None, help="judge LLM for --scheme open, e.g. Qwen/Qwen2.5-7B-Instruct")
    ev.add_argument("--map", default=None, choices=["vv", "kk", "random"],
                    help="relevance map ablation (None: vv, the paper's)")
    ev.add_argument("--no-ranking", action="store_true", help="ablation: answer on the top-relevance ROI")
    ev.add_argument("--layers", nargs=2, type=int, default=None, metavar=("L0", "L1"),
                    help="ablation: half-open layer range in the preset's numbering (None: the preset's)")
    ev.add_argument("--overrun", dest="overrun", action="store_true", default=None,
                    help="allow the search to overrun n_steps (None: the preset's choice)")
    ev.add_argument("--no-overrun", dest="overrun", action="store_false", help="stop at n_steps exactly")
    ev.add_argument("--gt-targets", action="store_true", help="give FOCUS V*Bench's GT target objects")
    ev.add_argument("--reuse-permutations", action="store_true",
                    help="HR-Bench: share the search across the 4 option permutations (reported separately)")
    ev.add_argument("--flops", action="store_true", help="measure FLOPs with FlopCounterMode (slow)")
    ev.add_argument("--retry-errors", action="store_true", help="rerun samples recorded as errors")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--max-pixels", type=int, default=None, help=MAX_PIXELS_HELP)
    common(ev)
    ev.set_defaults(func=cmd_eval)

    doc = sub.add_parser("doctor", help="will a real run work here? environment, GPU, models, one question each",
                         formatter_class=fmt, epilog=models)
    doctor_arguments(doc)
    doc.set_defaults(func=cmd_doctor)
    return ap


def main(argv=None) -> int:
    """Run a command. Bad input -> one line on stderr and exit code 2; Ctrl-C -> one line and 130; any
    other failure -> one line and 1. `--debug` shows the traceback instead."""
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except KeyboardInterrupt:
        if a.debug:
            raise
        print("\ninterrupted: finished samples are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if a.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or an environment problem: still one line unless --debug
        if a.debug:
            raise
        print(f"error: {e.__class__.__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
