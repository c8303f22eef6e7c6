"""Synthetic benchmarks in EACH real schema, offline and deterministic (images from focuslib.offline.synthetic).

`write_synthetic(name, root, n=8, seed=0, size=(320, 240))` writes files laid out as the real dataset
(what `hf download ID --repo-type dataset --local-dir root` would give), so that
`load_benchmark(name, source=root)` reads them through the same code as the real data:

  vstar        test_questions.jsonl + <category>/syn_<i>.jpg + sibling .json          (V*Bench)
  hrbench_4k/8k hr_bench_<k>.parquet or .tsv: index, question, A-D, answer, category, cycle_category,
               image (base64 JPEG); 4 consecutive rows = cyclic permutations of one question
  mme_rw_lite  data/train-00000-of-00001.parquet: index, question, multi-choice options, answer,
               category ("Perception/Monitoring" ...), l2-category, bytes (base64), path
  aokvqa       data/validation-00000-of-00001.parquet: image {bytes, path}, question_id, question,
               choices, correct_choice_idx, direct_answers, difficult_direct_answer, rationales
  gqa          testdev_balanced_instructions/testdev-00000-of-00001.parquet (id, imageId, question,
               answer, fullAnswer, isBalanced, types) + testdev_balanced_images/testdev-...parquet
               (id, image {bytes, path}); two questions per image

`ensure_synthetic(name, root, n, size)` is what `focus eval --data synthetic` and the notebooks use: it
writes atomically (temporary directory + rename, completeness marker) and rewrites a set of other settings.

`corrupt=[i, ...]` replaces the image of those samples by garbage bytes (error-path tests).
Returns the ground truth it wrote, `[{"id", "answer", "category", ...}]`, for round-trip tests.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

from focuslib.eval.benchmarks import get_spec
from focuslib.offline import synthetic as S


LETTERS = "ABCDE"
SPATIAL_FILLERS = ["above", "below", "overlapping"]
MME_DOMAINS = ["Monitoring", "Autonomous_Driving", "OCR with Complex Context", "Remote Sensing", "Diagram and Table"]
GARBAGE = b"\xff\xd8\xff\xe0 this is not a JPEG"


def _jpeg(img, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _items(n: int, seed: int, size):
    t = max(8, min(size) // 10)
    return S.generate(n, seed=seed, size=size, target_px=(t, int(t * 1.5)), n_distractors=(1, 3))


def _correct_and_wrong(it, k: int) -> tuple[str, list[str]]:
    correct = it.options[LETTERS.index(it.label)]
    wrong = [o for o in it.options if o != correct]
    if it.category == "relative_position":
        wrong += SPATIAL_FILLERS
    else:
        wrong += [c for c in S.COLORS if c != correct and c not in wrong]
    return correct, wrong[:k - 1]


def write_vstar(root, n=8, seed=0, size=(320, 240), corrupt=()):
    items = _items(n, seed, size)
    S.write_vstar(items, root)
    for i in corrupt:
        (Path(root) / f"{items[i].category}/syn_{items[i].question_id}.jpg").write_bytes(GARBAGE)
    return [{"id": it.question_id, "answer": it.label, "category": it.category, "options": it.options,
             "question": it.question, "bboxes": it.bboxes, "targets": it.target_objects, "text": it.text}
            for it in items]


def write_hrbench(root, n=4, seed=0, size=(320, 240), k="4k", fmt="parquet", corrupt=(), image_refs=False):
    """n questions x 4 cyclic permutations = 4n rows. image_refs: rows 2-4 of a question store the
    index of row 1 instead of the image (VLMEvalKit tsv convention)."""
    import pandas as pd
    rows, truth = [], []
    for q, it in enumerate(_items(n, seed, size)):
        correct, wrong = _correct_and_wrong(it, 4)
        base = [correct, *wrong]
        b64 = GARBAGE if q in corrupt else _jpeg(it.image)
        b64 = base64.b64encode(b64).decode()
        first = len(rows)
        for c in range(4):
            opts = base[c:] + base[:c]  # cyclic permutation c
            ans = LETTERS[opts.index(correct)]
            rows.append({"index": first + c, "question": it.question, "A": opts[0], "B": opts[1], "C": opts[2],
                         "D": opts[3], "answer": ans,
                         "category": "single" if it.category == "direct_attributes" else "cross",
                         "cycle_category": c, "image": str(first) if (image_refs and c) else b64})
            truth.append({"id": str(first + c), "answer": ans, "options": opts, "question": it.question,
                          "category": "FSP" if it.category == "direct_attributes" else "FCP", "cycle": str(c)})
    df = pd.DataFrame(rows)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "tsv":
        df.to_csv(root / f"hr_bench_{k}.tsv", sep="\t", index=False)
    else:
        df.to_parquet(root / f"hr_bench_{k}.parquet", index=False)
    return truth


def write_mme(root, n=10, seed=0, size=(320, 240), corrupt=()):
    import pandas as pd
    rows, truth = [], []
    for i, it in enumerate(_items(n, seed, size)):
        correct, wrong = _correct_and_wrong(it, 5)
        opts = [correct, *wrong]
        rot = i % 5
        opts = opts[rot:] + opts[:rot]
        ans = LETTERS[opts.index(correct)]
        subset = "Perception" if i % 3 else "Reasoning"
        domain = MME_DOMAINS[i % len(MME_DOMAINS)]
        task = "color" if it.category == "direct_attributes" else "position"
        img = GARBAGE if i in corrupt else _jpeg(it.image)
        rows.append({"index": 1000 + i, "question": it.question,
                     "multi-choice options": [f"({LETTERS[j]}) {o}" for j, o in enumerate(opts)],
                     "answer": ans, "category": f"{subset}/{domain}", "l2-category": task,
                     "bytes": base64.b64encode(img).decode(), "path": f"syn/{i}.jpg"})
        abbrev = {"Monitoring": "MO", "Autonomous_Driving": "AD", "OCR with Complex Context": "OCR",
                  "Remote Sensing": "RS", "Diagram and Table": "DT"}[domain]
        truth.append({"id": str(1000 + i), "answer": ans, "options": opts, "question": it.question,
                      "subset": subset, "category": f"{subset}/{abbrev}", "task": f"{subset}/{abbrev}/{task}"})
    out = Path(root) / "data"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "train-00000-of-00001.parquet", index=False)
    return truth


def write_aokvqa(root, n=8, seed=0, size=(320, 240), corrupt=()):
    import pandas as pd
    rows, truth = [], []
    for i, it in enumerate(_items(n, seed, size)):
        correct, wrong = _correct_and_wrong(it, 4)
        choices = [*wrong[:i % 4], correct, *wrong[i % 4:]][:4]
        idx = choices.index(correct)
        img = GARBAGE if i in corrupt else _jpeg(it.image)
        rows.append({"image": {"bytes": img, "path": None}, "question_id": f"q{i:04d}", "question": it.question,
                     "choices": choices, "correct_choice_idx": idx, "direct_answers": [correct] * 10,
                     "difficult_direct_answer": False, "rationales": [f"The object is {correct}."] * 3})
        truth.append({"id": f"q{i:04d}", "answer": LETTERS[idx], "options": choices, "question": it.question})
    out = Path(root) / "data"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "validation-00000-of-00001.parquet", index=False)
    return truth


def write_gqa(root, n=4, seed=0, size=(320, 240), corrupt=()):
    """n images, 2 questions each (answer and a yes/no about it)."""
    import pandas as pd
    qs, ims, truth = [], [], []
    for i, it in enumerate(_items(n, seed, size)):
        iid = f"n{100 + i}"
        img = GARBAGE if i in corrupt else _jpeg(it.image)
        ims.append({"id": iid, "image": {"bytes": img, "path": f"{iid}.jpg"}})
        correct = it.options[LETTERS.index(it.label)]
        wrong = next(o for o in it.options if o != correct)
        obj = it.target_objects[0]
        qa = [(it.question, correct, "query"),
              (f"Is the {obj} {wrong}?" if it.category == "direct_attributes" else it.question.replace(
                  " or right", "").replace(" left", f" {correct}"), "no" if it.category == "direct_attributes"
               else "yes", "verify")]
        for j, (q, a, st) in enumerate(qa):
            qid = f"{2 * i + j:08d}"
            qs.append({"id": qid, "imageId": iid, "question": q, "answer": a, "fullAnswer": f"{a.capitalize()}.",
                       "isBalanced": True, "types": {"structural": st, "semantic": "attr", "detailed": "x"}})
            truth.append({"id": qid, "answer": a, "question": q, "category": st, "imageId": iid})
    root = Path(root)
    for sub, rows in (("testdev_balanced_instructions", qs), ("testdev_balanced_images", ims)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(root / sub / "testdev-00000-of-00001.parquet", index=False)
    return truth


def write_synthetic(name: str, root, n: int | None = None, seed: int = 0, size=(320, 240), **kw):
    """Write the synthetic benchmark `name` (a key of focuslib.eval.benchmarks.BENCHMARKS) under `root`."""
    spec = get_spec(name)
    writers = {"vstar": write_vstar, "mme_rw_lite": write_mme, "aokvqa": write_aokvqa, "gqa": write_gqa}
    if spec.name.startswith("hrbench"):
        return write_hrbench(root, n=n or 4, seed=seed, size=size, k=spec.name.split("_")[1], **kw)
    return writers[spec.name](root, **({"n": n} if n else {}), seed=seed, size=size, **kw)


__all__ = ["write_synthetic", "write_vstar", "write_hrbench", "write_mme", "write_aokvqa", "write_gqa"]


# ------------------------------------------------------------------------------------------------
# atomic, checked writes (an interrupted generation never leaves a half-written benchmark behind)

MARKER = "focuslib_synthetic.json"
ROWS_PER_ITEM = {"hrbench_4k": 4, "hrbench_8k": 4, "gqa": 2}  # samples per generated item (permutations, questions)
DEFAULT_N = 8


def default_n(name: str, limit: int | None) -> int:
    """Items to generate: enough for `limit` samples, at least DEFAULT_N."""
    per = ROWS_PER_ITEM.get(get_spec(name).name, 1)
    return max(DEFAULT_N, -(-limit // per)) if limit else DEFAULT_N


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_synthetic(name: str, root, n: int = DEFAULT_N, seed: int = 0, size=(320, 240),
                     log=print) -> Path:
    """The synthetic benchmark `name` at `root`, written if missing, incomplete or of other settings.

    Written into a temporary sibling directory with a completeness marker (MARKER: name, n, seed, size)
    as its last file, then renamed into place, so a kill at any moment leaves either no benchmark or a
    complete one. A directory without a matching marker (half-written by an older version, or other
    settings) is replaced. Generation is prefix-stable: ids 0..k-1 are the same items for any n >= k.
    Leftover temporary directories of dead processes are removed."""
    name = get_spec(name).name
    root = Path(root)
    want = {"name": name, "n": int(n), "seed": int(seed), "size": [int(size[0]), int(size[1])]}
    for tmp in root.parent.glob(f".{root.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)

    def current() -> dict | None:
        try:
            return json.loads((root / MARKER).read_text())
        except (OSError, ValueError):
            return None
    have = current()
    if have == want:
        return root
    if root.exists():
        why = "is incomplete (an interrupted generation)" if have is None else f"was made with {have}"
        log(f"synthetic {name} at {root} {why}: writing it again with n={n}, size={size[0]}x{size[1]}")
    if n < 1:
        raise ValueError(f"synthetic benchmarks need n >= 1 items, got {n}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_synthetic(name, tmp, n=n, seed=seed, size=tuple(size))
    (tmp / MARKER).write_text(json.dumps(want))
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        os.replace(root, old)
    try:
        os.replace(tmp, root)
    except OSError:  # another process put a benchmark there meanwhile: keep it if it is the one wanted
        shutil.rmtree(tmp, ignore_errors=True)
        if current() != want:
            raise
    shutil.rmtree(old, ignore_errors=True)
    return root


__all__ += ["ensure_synthetic", "default_n", "MARKER"]
