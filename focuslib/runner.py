"""The evaluation runner: `evaluate(mllm, benchmark, method, n_steps, limit, out_dir, **opts)`.

One JSON line per sample is appended and flushed as soon as it finishes; a rerun with the same
settings skips the ids already in the file (a torn last line from a crash is dropped), so a crash
loses at most the sample in flight and never duplicates one. A sample that fails (corrupt image,
model error) is written as an error record (counted wrong) and the run goes on. With several
processes (`accelerate launch -m focuslib.cli eval ...`) samples are sharded by process index, each
process writes its own shard file and process 0 merges them at the end (`merge_shards`).

Methods: "vanilla" (the base model on the whole image) and "focus"; the paper's ablations are
options of focus: map_variant random | kk | vv, ranking=False, layers=(l, L), overrun.
Baselines (focuslib.baselines, decisions.md D22): "zoomeye" and "vicrop-rel" / "vicrop-grad", with
`baseline_options` (depth, children / high, ...); same records, FP / time / memory / FLOPs accounting.
Schemes: "generate" (default: open-ended generation with the options in the prompt, exact match),
"logits" (V*Bench logits matching, C.5), "open" (V*Bench without options, LLM judge, C.2).
HR-Bench option-permutation reuse (off by default): the 4 cyclic permutations of a question share the
search (targets, maps, chosen crops); only the final answer is re-generated per permutation; the
results go to a separate file ("__reuse") and reused rows have search_fp 0 (`reused_from` set).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

from . import metrics as M
from .benchmarks import BenchmarkSpec, Sample, get_spec, load_benchmark

METHODS = ("vanilla", "focus", "zoomeye", "vicrop-rel", "vicrop-grad")  # baselines: focuslib.baselines
SCHEMES = ("generate", "logits", "open")


# ------------------------------------------------------------------------------------------------
# files


def read_records(path: str | Path, repair: bool = False) -> list[dict]:
    """Records of a results file; a torn (unparsable) line is skipped, and removed when `repair`."""
    path = Path(path)
    if not path.exists():
        return []
    good, bad = [], 0
    lines = path.read_text().splitlines()
    for line in lines:
        if not line.strip():
            continue
        try:
            good.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad and repair:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in good))
        os.replace(tmp, path)
    return good


def merge_shards(out_dir: str | Path, stem: str) -> Path:
    """Merge `<stem>.shard*of*.jsonl` into `<stem>.jsonl` (one record per id, first wins)."""
    out_dir = Path(out_dir)
    merged, seen = [], set()
    for f in sorted(out_dir.glob(f"{stem}.shard*of*.jsonl")) + [out_dir / f"{stem}.jsonl"]:
        for r in read_records(f):
            if r["id"] not in seen:
                seen.add(r["id"])
                merged.append(r)
    target = out_dir / f"{stem}.jsonl"
    tmp = target.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in merged))
    os.replace(tmp, target)
    return target


def shard_info() -> tuple[int, int]:
    """(process index, process count) when launched with several processes (`accelerate launch`,
    torchrun); accelerate's state first, torchrun's RANK / WORLD_SIZE where accelerate sees one process
    (e.g. CPU without MPI)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    from accelerate import PartialState
    st = PartialState()
    if st.num_processes > 1:
        return st.process_index, st.num_processes
    return int(os.environ.get("RANK", "0")), world


def barrier() -> None:
    """Wait for every process of a multi-process run (no-op for one process)."""
    if shard_info()[1] <= 1:
        return
    from accelerate import PartialState
    st = PartialState()
    if st.num_processes > 1:
        st.wait_for_everyone()
        return
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", s).strip("-") or "x"


# ------------------------------------------------------------------------------------------------
# the run


@dataclasses.dataclass
class RunSettings:
    benchmark: str
    method: str
    n_steps: int
    scheme: str
    model: str
    config: dict
    gt_targets: bool
    reuse_permutations: bool

    def stem(self) -> str:
        c = self.config
        abl = []
        if self.method == "focus":
            if c.get("map_variant", "vv") != "vv":
                abl.append(f"map-{c['map_variant']}")
            if not c.get("ranking", True):
                abl.append("no-ranking")
            if c.get("_layers_override"):
                abl.append("layers-{}-{}".format(*c["layers"]))
            if not c.get("overrun", True):
                abl.append("no-overrun")
            if self.gt_targets:
                abl.append("gt-targets")
        elif self.config.get("_tag"):  # baselines (focuslib.baselines): their options
            abl.append(self.config["_tag"])
            if self.gt_targets and self.method == "zoomeye":
                abl.append("gt-targets")
        parts = [self.benchmark, _slug(Path(self.model).name or self.model), self.method + "".join(f"+{a}" for a in abl)]
        if self.method == "focus":
            parts.append(f"n{self.n_steps}")
        parts.append(self.scheme)
        if self.reuse_permutations:
            parts.append("reuse")
        return "__".join(parts)


def _config(mllm, spec: BenchmarkSpec, n_steps: int, scheme: str, map_variant=None, ranking=True, layers=None,
            overrun=None, config_overrides=None):
    from .config import preset
    over = dict(config_overrides or {})
    if map_variant:
        over["map_variant"] = map_variant
    if not ranking:
        over["ranking"] = False
    if layers:
        over["layers"] = tuple(layers)
    if overrun is not None:
        over["overrun"] = overrun
    if scheme == "logits":
        over["max_new_tokens"] = 1  # the generated answer is not used; logits matching decides
    return preset(mllm.family, spec.preset, n_steps=n_steps, **over)


def evaluate(mllm, benchmark: str | BenchmarkSpec, method: str = "focus", n_steps: int = 8,
             limit: int | None = None, out_dir: str | Path = "runs", *, source=None,
             samples: list[Sample] | None = None, scheme: str = "generate", map_variant: str | None = None,
             ranking: bool = True, layers: tuple[int, int] | None = None, overrun: bool | None = None,
             config_overrides: dict | None = None, gt_targets: bool = False, reuse_permutations: bool = False,
             flops: bool = False, judge: Callable | None = None, progress: bool = True,
             on_record: Callable[[dict], None] | None = None, retry_errors: bool = False,
             shard: tuple[int, int] | None = None, print_table: bool = True,
             baseline_options: dict | None = None) -> dict:
    """Run `method` over `benchmark` and return {"summary", "table", "recall", "records", "path"}.

    source: local directory/file of the benchmark (default: the hub); samples: use these instead.
    gt_targets: give FOCUS the GT target objects (V*Bench) instead of extracting them.
    flops: measure FLOPs per sample with FlopCounterMode (slow; off by default).
    judge: an LLMJudge for scheme "open"; without one, open answers are stored unjudged (correct None).
    on_record: called with each record after it is written (progress hooks, tests).
    shard: (index, count) override of accelerate's process index / count.
    baseline_options: options of a baseline method (zoomeye: depth, children, ...; vicrop-*: high, ...).
    """
    from .search import Focus
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS} (ablations are options of focus)")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")
    spec = get_spec(benchmark)
    if scheme in ("logits", "open") and spec.name != "vstar":
        raise ValueError(f"scheme {scheme!r} needs option sentences: only V*Bench has them (C.2, C.5)")
    if samples is None:
        samples = load_benchmark(spec, source=source)
    samples = samples[:limit] if limit is not None else samples
    cfg = _config(mllm, spec, n_steps, scheme, map_variant, ranking, layers, overrun, config_overrides)
    cfg_dict = dataclasses.asdict(cfg)
    cfg_dict["_layers_override"] = bool(layers)
    solver = None
    if method not in ("vanilla", "focus"):  # a baseline answers instead of FOCUS, same records and accounting
        from .baselines import baseline_tag, make_baseline
        solver = make_baseline(mllm, method, max_new_tokens=cfg.max_new_tokens, **(baseline_options or {}))
        cfg_dict = dataclasses.asdict(solver.config)
        cfg_dict["_tag"] = baseline_tag(method, baseline_options)
    settings = RunSettings(spec.name, method, n_steps, scheme, getattr(mllm, "name", "model"), cfg_dict,
                           gt_targets, reuse_permutations)
    focus = solver or Focus(mllm, cfg)

    rank, world = shard or shard_info()
    units: list[list[Sample]] = []  # permutation groups stay in one shard
    for s in samples:
        if reuse_permutations and s.group and units and units[-1][0].group == s.group:
            units[-1].append(s)
        else:
            units.append([s])
    mine = [s for u in units[rank::world] for s in u]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = settings.stem()
    path = out_dir / (f"{stem}.jsonl" if world == 1 else f"{stem}.shard{rank}of{world}.jsonl")
    meta_path = out_dir / f"{stem}.meta.json"
    meta = {k: v for k, v in dataclasses.asdict(settings).items()}
    meta["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg_dict.items()
                      if not (isinstance(v, float) and v != v)}
    meta_json = json.loads(json.dumps(meta, default=str))
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta_json:
            raise RuntimeError(f"{meta_path} records different settings than this run; resume needs the same "
                               f"settings. Use another --out or delete {stem}.* to start over.")
    elif rank == 0:
        meta_path.write_text(json.dumps(meta_json, indent=1))

    done = {r["id"]: r for r in read_records(path, repair=True)}
    if retry_errors and any(r.get("error") for r in done.values()):
        done = {k: r for k, r in done.items() if not r.get("error")}
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
        os.replace(tmp, path)
    todo = [s for s in mine if s.id not in done]

    from tqdm.auto import tqdm
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress,
               desc=f"{spec.name} {method}" + (f" n={n_steps}" if method == "focus" else ""), dynamic_ncols=True)
    shared: dict[str, tuple[str, object]] = {}  # permutation group -> (anchor id, trace)
    correct = sum(bool(r.get("correct")) for r in done.values() if r["id"] in {s.id for s in mine})
    with open(path, "a") as fh:
        for s in todo:
            rec = _run_sample(mllm, focus, spec, s, method, scheme, gt_targets, flops, judge,
                              shared if reuse_permutations else None)
            fh.write(json.dumps(rec, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            correct += bool(rec.get("correct"))
            bar.update(1)
            bar.set_postfix(acc=f"{100 * correct / max(1, bar.n):.1f}%")
            if on_record is not None:
                on_record(rec)
    bar.close()

    if world > 1:
        barrier()
        if rank == 0:
            path = merge_shards(out_dir, stem)
    ids = {s.id for s in samples} if rank == 0 else {s.id for s in mine}
    records = [r for r in read_records(path) if r["id"] in ids]
    summary = M.aggregate(records, spec.aggregate)
    rec_pct = M.recall(records) if any(r.get("gt_boxes") for r in records) else None
    title = f"{spec.name} | {method}" + (f" n_steps={n_steps}" if method == "focus" else "") + \
        f" | {scheme} | {settings.model} | {len(records)} samples -> {path}"
    table = M.format_table(summary, title)
    if rec_pct is not None and method != "vanilla":
        table += f"\nrecall (ROI covers >= 50% of a GT box): {rec_pct:.2f}%"
    if reuse_permutations:
        table += f"\nreused searches: {sum(1 for r in records if r.get('reused_from'))} of {len(records)}"
    if print_table:
        print(table)
    return {"summary": summary, "table": table, "recall": rec_pct, "records": records, "path": str(path),
            "stem": stem}


def _run_sample(mllm, focus, spec: BenchmarkSpec, s: Sample, method: str, scheme: str, gt_targets: bool,
                flops: bool, judge, shared: dict | None) -> dict:
    from .schemes import logits_match
    rec = {"id": s.id, "benchmark": spec.name, "method": method, "scheme": scheme, "category": s.category,
           "groups": s.groups, "gt": s.answer, "options": s.options, "gt_boxes": s.gt_boxes}
    device = mllm.device
    try:
        image = s.image()
        M.reset_peak_memory(device)
        before = Counter(mllm.calls)
        prompt = s.question if scheme == "open" else s.prompt

        def work():
            trace, reused = None, None
            if method == "vanilla":
                final = [image]
                pred = None if scheme == "logits" else mllm.generate([image], prompt,
                                                                     max_new_tokens=focus.config.max_new_tokens)
            elif shared is not None and s.group in shared:
                reused, trace = shared[s.group]
                final = trace.final_images
                pred = None if scheme == "logits" else mllm.generate(final, prompt,
                                                                     max_new_tokens=focus.config.max_new_tokens)
            else:
                trace = focus.answer(image, s.question, targets=(s.targets if gt_targets else None),
                                     answer_prompt=prompt)
                final, pred = trace.final_images, trace.answer
                if shared is not None and s.group:
                    shared[s.group] = (s.id, trace)
            scores = None
            if scheme == "logits":
                best, scores = logits_match(mllm, final, s.question, s.option_sentences or [])
                pred = s.option_sentences[best]
            return pred, trace, reused, scores

        with M.Timer(device) as t:
            if flops:
                (pred, trace, reused, scores), n_flops = M.count_flops(work)
            else:
                (pred, trace, reused, scores), n_flops = work(), None
        calls = Counter(mllm.calls)
        calls.subtract(before)
        calls = {k: v for k, v in calls.items() if v}
        calls["total"] = sum(v for k, v in calls.items() if k != "verify_crops")
        rec.update(pred=pred, search_fp=0 if (trace is None or reused) else trace.search_fp, model_calls=calls,
                   time_s=t.s, peak_mem_gb=M.peak_memory_gb(device), flops=n_flops, error=None)
        if reused:
            rec["reused_from"] = reused
        if scheme == "logits":
            rec.update(correct=pred == s.option_sentences[0], correct_lenient=pred == s.option_sentences[0],
                       option_scores=scores)
        elif scheme == "open":
            ref = (s.option_sentences or [s.answer])[0]
            if judge is not None:
                v = judge(s.question, ref, pred)
                rec.update(correct=v["correct"], correct_lenient=v["correct"], judge=v)
            else:
                rec.update(correct=None, correct_lenient=None, judge=None)
            rec["reference"] = ref
        else:
            rec.update(M.score_answer(spec.scoring, pred, s.answer, s.options))
        if trace is not None:
            summ = trace.summary()
            rec["trace"] = summ
            rec["rois"] = M.examined_rois(summ)
    except Exception as e:  # the sample fails, the run goes on
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
        rec.update(pred=None, correct=False, correct_lenient=False, search_fp=None, model_calls=None,
                   time_s=None, peak_mem_gb=None, flops=None, error=f"{e.__class__.__name__}: {e}",
                   traceback="".join(traceback.format_exception(e)[-3:]))
    return rec


__all__ = ["evaluate", "read_records", "merge_shards", "shard_info", "barrier", "METHODS", "SCHEMES"]
