"""Benchmarks declared as data, read into one `Sample` record.

Every benchmark of the paper is a `BenchmarkSpec` (as lmms-eval declares tasks): where it lives on
the hub (id, config, split or files), which column holds what, how options and the answer are
encoded, the prompt template given to the model, how answers are scored and which keys the
results are aggregated by. `load_benchmark(name, source=None)` reads it from the hub
(`datasets.load_dataset` / `huggingface_hub`) or, with `source`, from a local directory or file
in the same schema (what `hf download ID --repo-type dataset --local-dir DIR` gives,
or what `focuslib.offline.synthetic_benchmarks` writes).

Images are never decoded while loading: `Sample.image()` decodes on demand (HR-Bench 8K is GBs).
Problems raise `BenchmarkError` naming the dataset id and what to do.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from focuslib.images import FocusInputError, load_image


LETTERS = "ABCDEFGHIJ"


class BenchmarkError(RuntimeError):
    """A benchmark cannot be read (unreachable, missing files or fields); the message says what to do."""


@dataclass
class Sample:
    """One question of a benchmark.

    question:  the bare question (no options), used for target extraction and open-ended VQA
    prompt:    the exact text given to the model for the final answer (question + options + instruction)
    options:   option texts in displayed order (letters A, B, ... in that order); [] for open questions
    answer:    ground truth: a letter for multiple choice, the answer text for open questions
    category:  the benchmark's main category, display name (V*: Attr / Spatial, HR: FSP / FCP, ...)
    groups:    aggregation keys -> value (always includes "category")
    gt_boxes:  [x, y, w, h] ground-truth boxes in original pixels (V*Bench only), else None
    targets:   ground-truth target object names (V*Bench only), else None
    option_sentences: full option sentences, CORRECT FIRST (V*Bench; logits matching and C.2)
    group:     key shared by rows that are permutations of one question (HR-Bench), else None
    """
    id: str
    benchmark: str
    question: str
    prompt: str
    options: list[str]
    answer: str
    category: str
    loader: Callable[[], Any] = field(repr=False, compare=False)
    groups: dict[str, str] = field(default_factory=dict)
    gt_boxes: list[list[float]] | None = None
    targets: list[str] | None = None
    option_sentences: list[str] | None = None
    group: str | None = None
    meta: dict = field(default_factory=dict)

    def image(self) -> Image.Image:
        """Decode the image (8-bit RGB). Raises FocusInputError naming the sample if it is corrupt."""
        try:
            return decode_image(self.loader())
        except FocusInputError as e:
            raise FocusInputError(f"{self.benchmark} sample {self.id}: {e}") from e


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark as data. Field names are the dataset's column names.

    reader:    "vstar" (jsonl + image folders + sibling json), "table" (one table of rows),
               "gqa" (question table joined to an image table by `join`)
    fields:    canonical name -> column: id, question, answer, category, image (+ extras)
    options:   ("text",) parse "(A) .." lines of the question field | ("columns", "A", "B", ..) |
               ("list", col) items "(A) text" | ("choices", col) plain texts | () open question
    answer:    "letter" (column holds a letter) | "index" (column holds the 0-based correct index) |
               "text" (open answer)
    prompt:    template with {question} and {options} (the option lines joined by newlines)
    option_line: how one option line is written ({letter}, {text})
    scoring:   "letter" (exact match with the letter) | "open" (GQA-normalised exact match)
    categories: raw category value -> display name (unlisted values kept as they are)
    aggregate: the `Sample.groups` keys results are reported by
    preset:    benchmark name for `focuslib.core.config.preset` (Tab. 7 variants)
    """
    name: str
    hub_id: str
    split: str
    reader: str
    fields: dict[str, str]
    options: tuple = ()
    answer: str = "letter"
    prompt: str = "{question}\n{options}"
    option_line: str = "({letter}) {text}"
    scoring: str = "letter"
    config: str | None = None
    categories: dict[str, str] = field(default_factory=dict)
    aggregate: tuple[str, ...] = ("category",)
    preset: str | None = None
    hub_mirrors: tuple[str, ...] = ()    # other hub ids of the same dataset, tried in order after hub_id
    hub_files: tuple[str, ...] = ()      # files fetched with huggingface_hub (reader vstar/table)
    local_globs: tuple[str, ...] = ()    # how to find the table(s) in a local directory
    image_source: str = "column"         # column | path (relative to the data root)
    note: str = ""


VSTAR_INSTRUCTION = "Answer with the option's letter from the given choices directly."

BENCHMARKS: dict[str, BenchmarkSpec] = {}


def _register(spec: BenchmarkSpec) -> BenchmarkSpec:
    BENCHMARKS[spec.name] = spec
    return spec


_register(BenchmarkSpec(
    name="vstar", hub_id="craigwu/vstar_bench", split="test", reader="vstar",
    fields=dict(id="question_id", question="text", answer="label", category="category", image="image"),
    options=("text",), answer="letter", prompt="{text}", scoring="letter",
    categories={"direct_attributes": "Attr", "relative_position": "Spatial"}, preset="vstar",
    hub_files=("test_questions.jsonl", "direct_attributes/*", "relative_position/*"),
    local_globs=("test_questions.jsonl",), image_source="path",
    note="the jsonl text (question, option lines, instruction) is given unchanged; OCR/GPT4V-hard not used"))

for _k in ("4k", "8k"):
    _register(BenchmarkSpec(
        name=f"hrbench_{_k}", hub_id="DreamMr/HR-Bench", split=f"hrbench_{_k}", reader="table",
        fields=dict(id="index", question="question", answer="answer", category="category", image="image",
                    cycle="cycle_category"),
        options=("columns", "A", "B", "C", "D"), answer="letter",
        prompt="{question}\n{options}\nAnswer the option letter directly.", option_line="{letter}. {text}",
        scoring="letter", categories={"single": "FSP", "cross": "FCP"}, aggregate=("category", "cycle"),
        preset="hrbench", hub_files=(f"hr_bench_{_k}.parquet", f"hr_bench_{_k}.tsv"),
        local_globs=(f"**/hr_bench_{_k}.parquet", f"**/hr_bench_{_k}.tsv"),
        note="prompt as lmms-eval's hrbench_doc_to_text; 4 consecutive rows are cyclic option permutations"))

MME_DOMAINS = {"OCR with Complex Context": "OCR", "Remote Sensing": "RS", "Diagram and Table": "DT",
               "Monitoring": "MO", "Autonomous_Driving": "AD", "Autonomous Driving": "AD"}
_register(BenchmarkSpec(
    name="mme_rw_lite", hub_id="yifanzhang114/MME-RealWorld-lite-lmms-eval", split="train", reader="table",
    fields=dict(id="index", question="question", answer="answer", category="category", image="bytes",
                task="l2-category"),
    options=("list", "multi-choice options"), answer="letter",
    prompt=("{question} The choices are listed below:\n{options}\nSelect the best answer to the above "
            "multiple-choice question based on the image. Respond with only the letter (A, B, C, D, or E) "
            "of the correct option.\nThe best answer is:"),
    scoring="letter", categories=MME_DOMAINS, aggregate=("subset", "category", "task"), preset="mme",
    local_globs=("**/*.parquet",),
    note="prompt as lmms-eval's mme_realworld_doc_to_text (trailing space dropped); category 'Perception/"
         "Monitoring' -> subset Perception, domain MO; task = l2-category"))

_register(BenchmarkSpec(
    name="aokvqa", hub_id="HuggingFaceM4/A-OKVQA", split="validation", reader="table",
    fields=dict(id="question_id", question="question", answer="correct_choice_idx", image="image"),
    options=("choices", "choices"), answer="index", prompt="{question}\n{options}\n" + VSTAR_INSTRUCTION,
    option_line="{letter}. {text}", scoring="letter", aggregate=("category",), preset="aokvqa",
    local_globs=("**/validation-*.parquet",),
    note="multiple choice on the validation split (the paper does not name the split)"))

_register(BenchmarkSpec(
    # lmms-eval moved GQA to lmms-lab-encoder/GQA (2026-07) "to relieve storage pressure": both are accepted
    name="gqa", hub_id="lmms-lab/GQA", hub_mirrors=("lmms-lab-encoder/GQA",), config="testdev_balanced_instructions",
    split="testdev", reader="gqa",
    fields=dict(id="id", question="question", answer="answer", image="image", join="imageId",
                image_id="id", category="types"),
    options=(), answer="text", prompt="{question}\nAnswer the question using a single word or phrase.",
    scoring="open", aggregate=("category",), preset="gqa",
    local_globs=("**/testdev_balanced_instructions/*.parquet", "**/testdev_balanced_images/*.parquet"),
    note="instructions joined to testdev_balanced_images by imageId; category = types.structural"))

ALIASES = {"v*": "vstar", "vstar_bench": "vstar", "v*bench": "vstar", "hrbench4k": "hrbench_4k",
           "hrbench8k": "hrbench_8k", "hr-bench-4k": "hrbench_4k", "hr-bench-8k": "hrbench_8k",
           "mme": "mme_rw_lite", "mme-realworld-lite": "mme_rw_lite", "a-okvqa": "aokvqa"}


def get_spec(name: str | BenchmarkSpec) -> BenchmarkSpec:
    if isinstance(name, BenchmarkSpec):
        return name
    key = ALIASES.get(name.lower(), name.lower())
    by_id = {i.lower(): s.name for s in BENCHMARKS.values() for i in (s.hub_id, *s.hub_mirrors)}
    key = by_id.get(key, key)   # a hub id (either GQA id) names its benchmark too
    if key not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[key]


# ------------------------------------------------------------------------------------------------
# images


def decode_image(value, root: Path | None = None) -> Image.Image:
    """An image from whatever a dataset stores: PIL, {"bytes", "path"}, raw bytes, base64 text or a path."""
    if isinstance(value, Image.Image):
        return load_image(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return decode_image(value["bytes"], root)
        if value.get("path"):
            return decode_image(str(value["path"]), root)
        raise FocusInputError("image record has neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return load_image(value)  # the same size guard and messages as image files
    if isinstance(value, (str, Path)):
        s = str(value)
        if len(s) < 1024:
            p = Path(s) if root is None or Path(s).is_absolute() else root / s
            if p.exists() or s.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".bmp")):
                return load_image(p)
        try:
            raw = base64.b64decode(s, validate=False)
        except (binascii.Error, ValueError) as e:
            raise FocusInputError(f"image text is neither a file nor base64 ({e})") from e
        return decode_image(raw)
    raise FocusInputError(f"cannot read an image from a {type(value).__name__}")


# ------------------------------------------------------------------------------------------------
# reading tables


def _offline_help(spec: BenchmarkSpec) -> str:
    cfg = f" --include '{spec.config}/*'" if spec.config else ""
    return (f"On a machine without network: on a connected machine run `hf download {spec.hub_id} --repo-type "
            f"dataset{cfg} --local-dir DIR`, copy DIR over and pass it as the source "
            f"(`focus eval --data DIR`, `load_benchmark('{spec.name}', source=DIR)`).")


def _unreachable(spec: BenchmarkSpec, e: Exception) -> BenchmarkError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return BenchmarkError(
        f"cannot load benchmark {spec.name!r} from the hub: dataset {spec.hub_id!r}"
        f"{' config ' + repr(spec.config) if spec.config else ''} split {spec.split!r}: "
        f"{e.__class__.__name__}: {first}\n{_offline_help(spec)}")


class _Table:
    """Rows of a table without decoding images: `df` (pandas, image columns dropped) + `image(i, col)`."""

    def __init__(self, df, image_getter: Callable[[int, str], Any], origin: str):
        self.df = df.reset_index(drop=True)
        self.image = image_getter
        self.origin = origin

    @classmethod
    def from_file(cls, path: Path, image_cols: set[str]) -> "_Table":
        import pandas as pd
        suffix = path.suffix.lower()
        if suffix == ".tsv":
            df = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".jsonl", ".json"):
            df = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
        else:
            raise BenchmarkError(f"unsupported table file {path} (use .parquet, .tsv or .jsonl)")
        images = {c: df[c].tolist() for c in image_cols if c in df.columns}
        rest = df.drop(columns=[c for c in images])
        return cls(rest, lambda i, c: images[c][i], str(path))

    @classmethod
    def concat(cls, tables: list["_Table"]) -> "_Table":
        import pandas as pd
        if len(tables) == 1:
            return tables[0]
        offsets, n = [], 0
        for t in tables:
            offsets.append(n)
            n += len(t.df)

        def get(i, c):
            k = max(j for j, o in enumerate(offsets) if o <= i)
            return tables[k].image(i - offsets[k], c)
        return cls(pd.concat([t.df for t in tables], ignore_index=True), get, ", ".join(t.origin for t in tables))

    @classmethod
    def from_hub(cls, spec: BenchmarkSpec, image_cols: set[str], config: str | None = None,
                 split: str | None = None) -> "_Table":
        import datasets
        errors = []
        for hub_id in (spec.hub_id, *spec.hub_mirrors):   # e.g. GQA: lmms-lab/GQA, then lmms-lab-encoder/GQA
            try:
                ds = datasets.load_dataset(hub_id, config or spec.config, split=split or spec.split)
                break
            except Exception as e:  # offline, gated, renamed ...
                errors.append(e)
        else:
            raise _unreachable(spec, errors[0]) from errors[-1]
        present = [c for c in image_cols if c in ds.column_names]
        for c in present:
            if isinstance(ds.features[c], datasets.Image):
                ds = ds.cast_column(c, datasets.Image(decode=False))  # keep bytes; decode lazily
        df = ds.remove_columns(present).to_pandas()
        return cls(df, lambda i, c: ds[i][c], f"hub:{hub_id}")

    def require(self, spec: BenchmarkSpec, cols) -> None:
        have = set(self.df.columns)
        missing = [c for c in cols if c not in have]
        if missing:
            raise BenchmarkError(
                f"benchmark {spec.name!r} (dataset {spec.hub_id!r}) read from {self.origin}: missing field(s) "
                f"{missing}; found {sorted(have)}. The schema may have changed: update "
                f"focuslib.eval.benchmarks.BENCHMARKS[{spec.name!r}].fields / options to the new column names.")


def _find(spec: BenchmarkSpec, root: Path, pattern: str) -> list[Path]:
    hits = sorted(p for p in root.glob(pattern) if p.is_file())
    return hits


def _local_tables(spec: BenchmarkSpec, source: Path, image_cols: set[str]) -> list[_Table]:
    """One table per local glob pattern (the first format found wins for alternatives of one name)."""
    if not source.exists():
        raise BenchmarkError(f"benchmark {spec.name!r}: local source {source} does not exist. "
                             + _offline_help(spec))
    if source.is_file():
        return [_Table.from_file(source, image_cols)]
    if spec.reader == "gqa":
        out = []
        for pat in spec.local_globs:
            files = _find(spec, source, pat)
            if not files:
                raise BenchmarkError(f"benchmark {spec.name!r} (dataset {spec.hub_id!r}): no file matching "
                                     f"{pat!r} under {source}. " + _offline_help(spec))
            out.append(_Table.concat([_Table.from_file(f, image_cols) for f in files]))
        return out
    for pat in spec.local_globs:  # alternatives, e.g. .parquet then .tsv
        files = _find(spec, source, pat)
        if files:
            return [_Table.concat([_Table.from_file(f, image_cols) for f in files])]
    raise BenchmarkError(f"benchmark {spec.name!r} (dataset {spec.hub_id!r}): no file matching any of "
                         f"{list(spec.local_globs)} under {source}. " + _offline_help(spec))


def _hub_files(spec: BenchmarkSpec) -> Path:
    """Download the spec's hub files (V*Bench folders, one HR-Bench table); returns the local root."""
    try:
        from huggingface_hub import snapshot_download
        if spec.reader == "vstar":
            return Path(snapshot_download(spec.hub_id, repo_type="dataset", allow_patterns=list(spec.hub_files)))
        from huggingface_hub import hf_hub_download
        errors = []
        for f in spec.hub_files:
            try:
                return Path(hf_hub_download(spec.hub_id, f, repo_type="dataset"))
            except Exception as e:  # try the next format
                errors.append(e)
        raise errors[-1]
    except Exception as e:
        raise _unreachable(spec, e) from e


# ------------------------------------------------------------------------------------------------
# rows -> samples


_OPT_RE = re.compile(r"^\s*\(?([A-J])[).:]\s?(.*)$")


def _clean(v) -> Any:
    """numpy scalars/arrays from pandas -> python."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _options(spec: BenchmarkSpec, row: dict) -> list[str]:
    kind = spec.options[0] if spec.options else None
    if kind is None:
        return []
    if kind == "text":
        lines = str(row[spec.fields["question"]]).split("\n")
        return [m.group(2) for m in map(re.compile(r"^\(([A-J])\)\s?(.*)$").match, lines) if m]
    if kind == "columns":
        return [str(row[c]) for c in spec.options[1:] if c in row and str(row[c]) not in ("", "nan", "None")]
    if kind == "list":
        out = []
        for item in _clean(row[spec.options[1]]):
            m = _OPT_RE.match(str(item))
            out.append(m.group(2).strip() if m else str(item))
        return out
    if kind == "choices":
        return [str(x) for x in _clean(row[spec.options[1]])]
    raise BenchmarkError(f"benchmark {spec.name!r}: unknown options kind {kind!r}")


def _answer(spec: BenchmarkSpec, row: dict, options: list[str], sid: str) -> str:
    v = _clean(row[spec.fields["answer"]])
    if spec.answer == "index":
        i = int(v)
        if not 0 <= i < len(options):
            raise BenchmarkError(f"benchmark {spec.name!r} sample {sid}: answer index {i} outside "
                                 f"{len(options)} options")
        return LETTERS[i]
    v = str(v).strip()
    if spec.answer == "letter":
        m = re.fullmatch(r"\(?([A-J])\)?\.?", v)
        if not m:
            raise BenchmarkError(f"benchmark {spec.name!r} (dataset {spec.hub_id!r}) sample {sid}: answer "
                                 f"{v!r} in field {spec.fields['answer']!r} is not an option letter")
        return m.group(1)
    return v


def _prompt(spec: BenchmarkSpec, row: dict, question: str, options: list[str]) -> str:
    lines = "\n".join(spec.option_line.format(letter=LETTERS[i], text=t) for i, t in enumerate(options))
    return spec.prompt.format(question=question, options=lines, text=row.get(spec.fields["question"], ""))


def _bare_question(text: str) -> str:
    """V*Bench `text` -> the question alone (drop option lines and the instruction)."""
    keep = [ln for ln in text.split("\n") if ln.strip() and not re.match(r"^\([A-J]\)", ln)
            and ln.strip() != VSTAR_INSTRUCTION]
    return " ".join(keep).strip()


def _read_vstar(spec: BenchmarkSpec, root: Path) -> list[Sample]:
    jsonl = root / "test_questions.jsonl" if root.is_dir() else root
    root = jsonl.parent
    if not jsonl.is_file():
        raise BenchmarkError(f"benchmark 'vstar' (dataset {spec.hub_id!r}): {jsonl} not found. "
                             + _offline_help(spec))
    f = spec.fields
    out = []
    for n, line in enumerate(jsonl.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        missing = [c for c in (f["id"], f["question"], f["answer"], f["category"], f["image"]) if c not in rec]
        if missing:
            raise BenchmarkError(f"benchmark 'vstar' (dataset {spec.hub_id!r}) {jsonl}:{n}: missing field(s) "
                                 f"{missing}; found {sorted(rec)}")
        if rec[f["category"]] not in spec.categories:
            continue  # OCR / GPT4V-hard: not used by the paper
        sid = str(rec[f["id"]])
        img = root / rec[f["image"]]
        meta_path = img.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        options = _options(spec, rec)
        cat = spec.categories[rec[f["category"]]]
        out.append(Sample(
            id=sid, benchmark=spec.name, question=meta.get("question") or _bare_question(rec[f["question"]]),
            prompt=_prompt(spec, rec, "", options), options=options, answer=_answer(spec, rec, options, sid),
            category=cat, loader=lambda p=img: p, groups={"category": cat},
            gt_boxes=[list(map(float, b)) for b in meta["bbox"]] if "bbox" in meta else None,
            targets=list(meta["target_object"]) if "target_object" in meta else None,
            option_sentences=list(meta["options"]) if "options" in meta else None,
            meta={"image": rec[f["image"]]}))
    return out


def _rows_to_samples(spec: BenchmarkSpec, table: _Table, root: Path | None) -> list[Sample]:
    f = spec.fields
    need = [f["id"], f["question"], f["answer"]]
    if spec.options and spec.options[0] in ("columns",):
        need += list(spec.options[1:3])  # at least A and B
    elif spec.options and spec.options[0] in ("list", "choices"):
        need.append(spec.options[1])
    if "category" in f and spec.reader != "gqa" and spec.name != "aokvqa":
        need.append(f["category"])
    table.require(spec, need)
    img_col = f["image"]
    records = table.df.to_dict("records")
    # VLMEvalKit-style tsv: a short image value is the index of the row holding the image
    by_index = {str(r.get(f["id"])): i for i, r in enumerate(records)}
    out, prev_key, group_no = [], None, 0
    for i, row in enumerate(records):
        sid = str(_clean(row[f["id"]]))
        options = _options(spec, row)
        question = str(row[f["question"]]).strip()
        raw_cat = str(row.get(f.get("category", ""), "") or "")
        groups: dict[str, str] = {}
        if spec.name == "mme_rw_lite":
            subset = "Perception" if "perception" in raw_cat.lower() else "Reasoning"
            domain = spec.categories.get(raw_cat.split("/")[-1], raw_cat.split("/")[-1])
            cat = f"{subset}/{domain}"
            groups = {"subset": subset, "category": cat, "task": f"{cat}/{row.get(f['task'], '')}"}
        elif spec.name == "aokvqa":
            cat = "all"
        else:
            cat = spec.categories.get(raw_cat, raw_cat) or "all"
        groups.setdefault("category", cat)
        if "cycle" in f and f["cycle"] in row:
            groups["cycle"] = str(_clean(row[f["cycle"]]))

        def loader(i=i):
            v = table.image(i, img_col)
            if isinstance(v, str) and len(v) <= 64 and v.strip() in by_index and by_index[v.strip()] != i:
                v = table.image(by_index[v.strip()], img_col)
            return decode_image(v, root) if root is not None else v
        group = None
        if spec.name.startswith("hrbench"):
            # the 4 cyclic permutations: consecutive rows with the same question and option set
            key = hashlib.sha1((question + "\x00" + "\x00".join(sorted(options))).encode()).hexdigest()[:12]
            if key != prev_key:
                group_no += 1
            prev_key = key
            group = f"{group_no}:{key}"
        meta = {k: _clean(row[c]) for k, c in f.items()
                if k not in ("id", "question", "answer", "image", "category") and c in row and k != "join"}
        out.append(Sample(id=sid, benchmark=spec.name, question=question,
                          prompt=_prompt(spec, row, question, options), options=options,
                          answer=_answer(spec, row, options, sid), category=cat, loader=loader, groups=groups,
                          group=group, meta=meta))
    return out


def _gqa_samples(spec: BenchmarkSpec, qs: _Table, ims: _Table) -> list[Sample]:
    f = spec.fields
    qs.require(spec, [f["id"], f["question"], f["answer"], f["join"]])
    ims.require(spec, [f["image_id"]])
    where = {str(v): i for i, v in enumerate(ims.df[f["image_id"]].tolist())}
    out = []
    for row in qs.df.to_dict("records"):
        sid, iid = str(row[f["id"]]), str(row[f["join"]])
        if iid not in where:
            raise BenchmarkError(f"benchmark 'gqa' (dataset {spec.hub_id!r}): question {sid} refers to imageId "
                                 f"{iid!r}, absent from testdev_balanced_images")
        types = _clean(row.get(f["category"])) if f["category"] in row else None
        cat = str(types.get("structural") or "all") if isinstance(types, dict) else "all"
        q = str(row[f["question"]]).strip()
        out.append(Sample(id=sid, benchmark=spec.name, question=q, prompt=_prompt(spec, row, q, []), options=[],
                          answer=str(row[f["answer"]]).strip(), category=cat,
                          loader=lambda j=where[iid]: ims.image(j, f["image"]), groups={"category": cat},
                          meta={"imageId": iid, "fullAnswer": row.get("fullAnswer")}))
    return out


def load_benchmark(name: str | BenchmarkSpec, source: str | Path | None = None, limit: int | None = None,
                   categories: list[str] | None = None) -> list[Sample]:
    """Samples of a benchmark, from the hub (source=None) or a local directory/file in the same schema."""
    spec = get_spec(name)
    image_cols = {spec.fields["image"]}
    root = Path(source) if source is not None else None
    if spec.reader == "vstar":
        samples = _read_vstar(spec, root if root is not None else _hub_files(spec))
    elif spec.reader == "gqa":
        if root is None:
            qs = _Table.from_hub(spec, image_cols)
            ims = _Table.from_hub(spec, image_cols, config="testdev_balanced_images")
        else:
            qs, ims = _local_tables(spec, root, image_cols)
        samples = _gqa_samples(spec, qs, ims)
    else:
        if root is None and spec.hub_files:
            root = _hub_files(spec)
        if root is None:
            table = _Table.from_hub(spec, image_cols)
            base = None
        else:
            (table,) = _local_tables(spec, root, image_cols)
            base = root if root.is_dir() else root.parent
        samples = _rows_to_samples(spec, table, base)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise BenchmarkError(f"benchmark {spec.name!r}: duplicate sample ids {dup}")
    if categories:
        samples = [s for s in samples if s.category in categories]
    return samples[:limit] if limit is not None else samples


__all__ = ["Sample", "BenchmarkSpec", "BenchmarkError", "BENCHMARKS", "get_spec", "load_benchmark",
           "decode_image", "LETTERS"]
