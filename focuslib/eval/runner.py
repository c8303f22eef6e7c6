"""The evaluation runner: `evaluate(mllm, benchmark, method, n_steps, limit, out_dir, **opts)`.

One JSON line per sample is appended and flushed as soon as it finishes; a rerun with the same
settings skips the ids already in the file (a torn last line from a crash is dropped), so a crash
loses at most the sample in flight and never duplicates one. A sample that fails (corrupt image,
model error) is written as an error record (counted wrong) and the run goes on. With several
processes (`accelerate launch -m focuslib.cli eval ...`) samples are sharded by process index, each
process writes its own shard file and process 0 merges them at the end (`merge_shards`: the newest
record per id wins). One writer per file (an OS file lock); appends always start on a new line; the
summary counts each id once (the last record).

Methods: each is a Solver (focuslib.eval.solver, docs/architecture.md) driven the same way: "vanilla" (the
base model on the whole image), "focus" (the paper's ablations are options of focus: map_variant
random | kk | vv, ranking=False, layers=(l, L), overrun) and the baselines (focuslib.eval.baselines,
decisions.md D22) "zoomeye" and "vicrop-rel" / "vicrop-grad", with `baseline_options` (depth, children /
high, ...); same records, FP / time / memory / FLOPs accounting.
Schemes: "generate" (default: open-ended generation with the options in the prompt, exact match),
"logits" (V*Bench logits matching, C.5), "open" (V*Bench without options, LLM judge, C.2).
HR-Bench option-permutation reuse (off by default): the 4 cyclic permutations of a question share the
search (targets, maps, chosen crops); only the final answer is re-generated per permutation; the
results go to a separate file ("__reuse") and reused rows have search_fp 0 (`reused_from` set).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from focuslib.core.config import preset
from focuslib.core.trace import Clock
from focuslib.eval import metrics as M
from focuslib.eval.baselines import BASELINE_METHODS, baseline_tag
from focuslib.eval.benchmarks import BenchmarkSpec, get_spec, load_benchmark, Sample
from focuslib.eval.schemes import logits_match
from focuslib.eval.solver import make_solver, Solver, SOLVER_METHODS
from focuslib.images import FocusInputError
from focuslib.models.base import calls_since


METHODS = SOLVER_METHODS   # vanilla, focus and the baselines (focuslib.eval.solver)
SCHEMES = ("generate", "logits", "open")


# ------------------------------------------------------------------------------------------------
# files


class RunError(FocusInputError):
    """A results file or run directory the runner cannot use as it is; the message says what to do."""


def _parse_line(line: str) -> list | None:
    """JSON values on one line: normally one record; several when an append was glued onto a record that
    lacked its final newline (older versions); None for a torn line (a crash during the write)."""
    dec, out, i = json.JSONDecoder(), [], 0
    try:
        while i < len(line):
            v, i = dec.raw_decode(line, i)
            out.append(v)
            while i < len(line) and line[i].isspace():
                i += 1
    except json.JSONDecodeError:
        return None
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_records(path: str | Path, repair: bool = False) -> list[dict]:
    """Records of a results file, in file order (duplicates kept; `unique_records` picks one per id).

    A torn (unparsable) line from a crash is skipped and, with `repair`, removed (said on stderr); records
    glued onto one line are split. A line that parses but is no record (not an object, or without "id") and
    text that is not UTF-8 raise RunError: such a file was not written by this runner."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise RunError(f"{path} line {line} is not UTF-8 text, so it is not a focuslib results file; "
                       "move it away or choose another --out") from None
    good, torn, glued = [], 0, 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        values = _parse_line(line.strip())
        if values is None:
            torn += 1
            continue
        glued += len(values) > 1
        for v in values:
            if not isinstance(v, dict) or "id" not in v:
                what = "has no 'id'" if isinstance(v, dict) else f"is a JSON {type(v).__name__}, not a record"
                raise RunError(f"{path} line {n} {what}, so it is not a focuslib results file; "
                               "fix or delete that line, or choose another --out")
            v["id"] = str(v["id"])
            good.append(v)
    if repair and (torn or glued or (text and not text.endswith("\n"))):
        if torn:
            print(f"note: dropped {torn} torn line(s) of an interrupted write from {path}; "
                  "those samples run again", file=sys.stderr)
        _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in good))
    return good


def unique_records(records: list[dict]) -> list[dict]:
    """One record per id, the last one in the list (a rerun's record replaces an earlier one)."""
    last = {}
    for r in records:
        last.pop(r["id"], None)
        last[r["id"]] = r
    return list(last.values())


def _newest_per_id(files: list[Path]) -> dict[str, dict]:
    """The newest record per id over `files`: by its "finished_at" time, by the file's modification time
    for records written before records carried one; ties go to the later file / line."""
    best: dict[str, tuple[float, int, dict]] = {}
    order = 0
    for f in files:
        if not f.exists():
            continue
        mtime = f.stat().st_mtime
        for r in read_records(f):
            order += 1
            key = (float(r.get("finished_at") or mtime), order)
            if r["id"] not in best or key >= best[r["id"]][:2]:
                best[r["id"]] = (*key, r)
    return {k: v[2] for k, v in best.items()}


def merge_shards(out_dir: str | Path, stem: str) -> Path:
    """Merge `<stem>.shard*of*.jsonl` and `<stem>.jsonl` into `<stem>.jsonl`: one record per id, the newest
    (decisions.md D35); the merged shard files are then deleted so that no stale shard can win later."""
    out_dir = Path(out_dir)
    target = out_dir / f"{stem}.jsonl"
    shards = sorted(out_dir.glob(f"{stem}.shard*of*.jsonl"))
    with run_lock(target):
        merged = _newest_per_id([target, *shards])
        _atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in merged.values()))
        for f in shards:
            f.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def run_lock(path: Path):
    """Hold `.<name>.lock` beside `path` (an OS file lock, freed by the OS even on SIGKILL) while writing `path`; a second
    writer is refused with RunError instead of interleaving its records."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock
        yield
        return
    lock = path.with_name(f".{path.name}.lock")  # stays (harmless): deleting it would race a waiting writer
    fh = open(lock, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise RunError(f"another run (pid {holder}) is writing {path}; wait for it to finish or use another "
                       "--out (two writers would duplicate samples)") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _start_on_new_line(path: Path) -> None:
    """Appends must start on a new line: a last record without its newline would swallow the next one."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def exit_with_parent(poll_s: float = 0.5) -> None:
    """Worker processes of a multi-process run exit when their launcher dies (SIGKILL of the launcher or
    of its process group): a daemon thread watches the parent pid. Without it orphaned workers go on
    appending and a relaunch writes the same shard twice."""
    import threading
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                print(f"launcher (pid {parent}) is gone: worker {os.getpid()} stops", file=sys.stderr)
                os._exit(143)
    threading.Thread(target=watch, name="focus-exit-with-parent", daemon=True).start()


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
        elif self.config.get("_tag"):  # baselines (focuslib.eval.baselines): their options
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
             baseline_options: dict | None = None, data_tag: str | None = None) -> dict:
    """Run `method` over `benchmark` and return {"summary", "table", "recall", "records", "path"}.

    source: local directory/file of the benchmark (default: the hub); samples: use these instead.
    gt_targets: give FOCUS the GT target objects (V*Bench) instead of extracting them.
    flops: measure FLOPs per sample with FlopCounterMode (slow; off by default).
    judge: an LLMJudge for scheme "open"; without one, open answers are stored unjudged (correct None).
    on_record: called with each record after it is written (progress hooks, tests).
    shard: (index, count) override of accelerate's process index / count; the caller merges (merge_shards).
    baseline_options: options of a baseline method (zoomeye: depth, children, ...; vicrop-*: high, ...).
    data_tag: what data the run reads (e.g. the synthetic set's size), kept in meta.json so that a resume
    on other data is refused.

    One writer per results file (`run_lock`); records carry `finished_at`; the summary counts each id once.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS} (ablations are options of focus)")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")
    spec = get_spec(benchmark)
    if scheme in ("logits", "open") and spec.name != "vstar":
        raise ValueError(f"scheme {scheme!r} needs option sentences: only V*Bench has them (C.2, C.5)")
    if limit is not None and limit < 1:
        raise RunError(f"limit must be a positive number of samples, got {limit}")
    if n_steps < 1:
        raise RunError(f"n_steps must be at least 1, got {n_steps}")
    if samples is None:
        samples = load_benchmark(spec, source=source)
    samples = samples[:limit] if limit is not None else samples
    cfg = _config(mllm, spec, n_steps, scheme, map_variant, ranking, layers, overrun, config_overrides)
    cfg.resolved_layers(mllm.num_layers)  # a bad layer range fails here, not as an error in every record
    cfg_dict = dataclasses.asdict(cfg)
    cfg_dict["_layers_override"] = bool(layers)
    solver = make_solver(mllm, method, cfg, **(baseline_options or {}))   # eval.solver: one contract for all
    if method in BASELINE_METHODS:  # a baseline's own config is what its results depend on
        cfg_dict = dataclasses.asdict(solver.config)
        cfg_dict["_tag"] = baseline_tag(method, baseline_options)
    settings = RunSettings(spec.name, method, n_steps, scheme, getattr(mllm, "name", "model"), cfg_dict,
                           gt_targets, reuse_permutations)

    rank, world = shard or shard_info()
    units: list[list[Sample]] = []  # permutation groups stay in one shard
    for s in samples:
        if reuse_permutations and s.group and units and units[-1][0].group == s.group:
            units[-1].append(s)
        else:
            units.append([s])
    mine = [s for u in units[rank::world] for s in u]

    out_dir = Path(out_dir)
    check_writable(out_dir)
    stem = settings.stem()
    main_path = out_dir / f"{stem}.jsonl"
    path = main_path if world == 1 else out_dir / f"{stem}.shard{rank}of{world}.jsonl"
    meta_path = out_dir / f"{stem}.meta.json"
    meta = dataclasses.asdict(settings)
    meta["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg_dict.items()
                      if not (isinstance(v, float) and v != v)}
    if data_tag:
        meta["data"] = data_tag
    if getattr(mllm, "weights_id", None):
        meta["weights"] = mllm.weights_id
    meta_json = json.loads(json.dumps(meta, default=str))
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunError(f"{meta_path} is empty or not JSON, so this run's settings cannot be checked; delete "
                           f"it to resume with the present settings (the results in {main_path.name} are kept)") from None
        if "data" not in old:  # written before runs recorded their data
            old["data"] = meta_json.get("data")
            old = {k: v for k, v in old.items() if v is not None or k != "data"}
        # weights are compared when both sides know them (files written before runs recorded them do not)
        old_w, new_w = old.pop("weights", None), meta_json.get("weights")
        if old_w and new_w and old_w != new_w:
            raise RunError(f"{meta_path}: the results in {main_path.name} were written by other weights under the "
                           f"same model name ({old_w}; this model: {new_w}), e.g. a retrained checkpoint in the "
                           f"same folder. Use another --out, or delete {stem}.* to start over.")
        now = {k: v for k, v in meta_json.items() if k != "weights"}
        if old != now:
            diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
            raise RunError(f"{meta_path} records different settings ({', '.join(diff)}) than this run; resume "
                           f"needs the same settings. Use another --out or delete {stem}.* to start over.")
    elif rank == 0:
        _atomic_write_text(meta_path, json.dumps(meta_json, indent=1))

    with run_lock(path):
        recs = read_records(path, repair=True)
        if world > 1:  # records of earlier single-process or merged runs count as done too; newest wins
            done = _newest_per_id([main_path, path])
        else:
            done = {r["id"]: r for r in recs}
        if retry_errors and any(r.get("error") for r in done.values()):
            done = {k: r for k, r in done.items() if not r.get("error")}
            if world == 1:  # the retried records replace the errors in place; shards: the newest wins
                _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in done.values()))
        todo = [s for s in mine if s.id not in done]

        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress,
                   desc=f"{spec.name} {method}" + (f" n={n_steps}" if method == "focus" else ""), dynamic_ncols=True)
        shared: dict[str, tuple[str, object]] = {}  # permutation group -> (anchor id, trace)
        mine_ids = {s.id for s in mine}
        correct = sum(bool(r.get("correct")) for r in done.values() if r["id"] in mine_ids)
        _start_on_new_line(path)
        with open(path, "a") as fh:
            for s in todo:
                rec = _run_sample(mllm, solver, spec, s, method, scheme, gt_targets, flops, judge,
                                  shared if reuse_permutations and method != "vanilla" else None)
                fh.write(json.dumps(rec, default=str) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                correct += bool(rec.get("correct"))
                bar.update(1)
                bar.set_postfix(acc=f"{100 * correct / max(1, bar.n):.1f}%")
                if on_record is not None:
                    on_record(rec)
        bar.close()

    if world > 1 and shard is None:  # a launched run; with a `shard` override the caller merges when all are done
        barrier()
        if rank == 0:
            path = merge_shards(out_dir, stem)
    ids = {s.id for s in samples} if rank == 0 else mine_ids
    records = unique_records([r for r in read_records(path) if r["id"] in ids])
    summary = M.aggregate(records, spec.aggregate)
    rec_pct = M.recall(records) if any(r.get("gt_boxes") for r in records) else None
    title = f"{spec.name} | {method}" + (f" n_steps={n_steps}" if method == "focus" else "") + \
        f" | {scheme} | {settings.model} | {len(records)} samples -> {path}"
    table = M.format_table(summary, title)
    if rec_pct is not None and method != "vanilla":
        table += f"\nrecall (ROI covers >= 50% of a GT box): {rec_pct:.2f}%"
    if reuse_permutations:
        table += f"\nreused searches: {sum(1 for r in records if r.get('reused_from'))} of {len(records)}"
    if print_table and rank == 0:  # other ranks hold a partial shard: process 0 prints the merged table
        print(table)
    return {"summary": summary, "table": table, "recall": rec_pct, "records": records, "path": str(path),
            "stem": stem}


def _run_sample(mllm, solver: Solver, spec: BenchmarkSpec, s: Sample, method: str, scheme: str, gt_targets: bool,
                flops: bool, judge, shared: dict | None) -> dict:
    rec = {"id": s.id, "benchmark": spec.name, "method": method, "scheme": scheme, "category": s.category,
           "groups": s.groups, "gt": s.answer, "options": s.options, "gt_boxes": s.gt_boxes}
    try:
        return _answer_sample(rec, mllm, solver, spec, s, method, scheme, gt_targets, flops, judge, shared)
    finally:
        rec["finished_at"] = round(time.time(), 6)  # merge rule: the newest record per id wins


def _answer_sample(rec: dict, mllm, solver: Solver, spec: BenchmarkSpec, s: Sample, method: str, scheme: str,
                   gt_targets: bool, flops: bool, judge, shared: dict | None) -> dict:
    device = mllm.device
    try:
        image = s.image()
        M.reset_peak_memory(device)
        before = Counter(mllm.calls)
        prompt = s.question if scheme == "open" else s.prompt

        def work():
            trace, reused = None, None
            if method == "vanilla" and scheme == "logits":   # the options are scored on the whole image
                final, pred = [image], None
            elif shared is not None and s.group in shared:
                reused, trace = shared[s.group]
                final = trace.final_images
                pred = None if scheme == "logits" else mllm.generate(final, prompt,
                                                                     max_new_tokens=solver.config.max_new_tokens)
            else:
                trace = solver.answer(image, s.question, targets=(s.targets if gt_targets else None),
                                     answer_prompt=prompt)
                final, pred = trace.final_images, trace.answer
                if shared is not None and s.group:
                    shared[s.group] = (s.id, trace)
            scores = None
            if scheme == "logits":
                best, scores = logits_match(mllm, final, s.question, s.option_sentences or [])
                pred = s.option_sentences[best]
            return pred, trace, reused, scores

        clock = Clock(device)
        with clock("total") as t:
            if flops:
                (pred, trace, reused, scores), n_flops = M.count_flops(work)
            else:
                (pred, trace, reused, scores), n_flops = work(), None
        calls = calls_since(mllm, before)
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
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
        rec.update(pred=None, correct=False, correct_lenient=False, search_fp=None, model_calls=None,
                   time_s=None, peak_mem_gb=None, flops=None, error=f"{e.__class__.__name__}: {e}",
                   traceback="".join(traceback.format_exception(e)[-3:]))
    return rec


def check_writable(out_dir: Path) -> None:
    """Fail before any model work if `out_dir` cannot hold results (a file in the way, no permission)."""
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists() and not p.is_dir():
            raise RunError(f"cannot write results under {out_dir}: {p} is a file, not a directory; "
                           "choose another --out")
        if p.exists():
            break
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write results under {out_dir} ({e.strerror or e}); choose another --out") from None


__all__ = ["evaluate", "read_records", "unique_records", "merge_shards", "run_lock", "RunError", "check_writable",
           "exit_with_parent", "shard_info", "barrier", "METHODS", "SCHEMES"]
