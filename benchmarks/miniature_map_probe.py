"""Stage I's map probe along a run's kept checkpoints (results_miniature.md, Update 9)

    python benchmarks/miniature_map_probe.py --runs .cache/m3-run14r .cache/m3-run14s2

For each run folder trained with `miniature3 --keep-checkpoints`: per kept stage-I checkpoint (and the stage's end,
stage-I.pt), miniature3.probe_map's hit@1 % at the preset layers on its probe scenes (synthetic.generate at
MAP_PROBE_SEED, never the report's seed), V-V and K-K map, by colour + shape name and by shape name, next to the
LM probes the run logged at that step. This is how `Recipe3.i_map_floor` was set: the step by which a draw that
loses the map has lost it, and the hit@1 that separates it from a draw that keeps it. ~6 s a checkpoint, 1 core.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import fields
from pathlib import Path

import torch

from focuslib.offline import miniature3 as M3

COLS = ("map colour shape", "kk map colour shape", "map shape", "kk map shape")
LM_COLS = ("color", "exists-yes", "exists-no")


def recipe_of(run: Path) -> M3.Recipe3:
    known = {f.name for f in fields(M3.Recipe3)}
    return M3.Recipe3(**{k: v for k, v in json.loads((run / "recipe.json").read_text()).items() if k in known})


def checkpoints(run: Path) -> list[tuple[int | str, Path]]:
    """(step, path) of the kept stage-I checkpoints in step order, then ("end", stage-I.pt) if the stage ended."""
    kept = sorted((int(re.search(r"step-(\d+)", p.name).group(1)), p) for p in run.glob("stage-I.step-*.pt"))
    end = run / "stage-I.pt"
    return kept + ([("end", end)] if end.exists() else [])


def trajectory(run: Path, n: int = 40) -> list[dict]:
    r = recipe_of(run)
    model = M3.build_model(r, M3.build_processor(r.input_side).tokenizer)
    hist = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    logged = {h["step"]: h["probe"] for h in hist if h.get("stage") == "I" and "probe" in h}
    last = max(logged) if logged else None
    rows = []
    for step, path in checkpoints(run):
        model.load_state_dict(torch.load(path, weights_only=False)["model"])
        model.eval()
        row = {"step": step, **M3.probe_map(model, n)}
        lm = logged.get(last if step == "end" else step, {})
        row.update({k: lm.get(k) for k in LM_COLS})
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run folders with kept stage-I checkpoints")
    ap.add_argument("--n", type=int, default=40, help="probe questions per kind of query")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | step | " + " | ".join(f"{c} (n = {a.n})" for c in COLS) + " | " + " | ".join(
        f"LM probe {c}" for c in LM_COLS) + " |\n|---|---|" + "---|" * (len(COLS) + len(LM_COLS)))
    for run in map(Path, a.runs):
        for row in trajectory(run, a.n):
            print(f"| {run.name} | {row['step']} | " + " | ".join(str(row.get(c)) for c in COLS + LM_COLS) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
