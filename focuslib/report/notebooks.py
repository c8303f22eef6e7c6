"""Executing the notebooks headless with papermill (`python -m focuslib.report`, make figures, the tests), and the
check of their papermill parameters."""
from __future__ import annotations

from pathlib import Path

from focuslib.report.tables import REPO


NOTEBOOKS = ["00_explore", "01_main_results", "02_ablations", "03_hyperparameters", "04_efficiency",
             "05_qualitative"]


def smoke_parameters(results_dir: str | Path, figures_dir: str | Path) -> dict:
    """papermill parameters of the smoke mode: the embedded default model, synthetic data, a few samples."""
    return {"smoke": True, "model": "tiny", "device": "cpu", "dtype": "float32", "limit": 2,
            "n_steps": [1, 2], "results_dir": str(results_dir), "figures_dir": str(figures_dir)}


KERNEL_NAME = "focuslib"


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """A Jupyter kernelspec `name` that runs THIS interpreter (installed into sys.prefix if missing or stale)."""
    import subprocess
    import sys
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return name
    except NoSuchKernel:
        pass
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", name,
                    "--display-name", f"Python (focuslib, {Path(sys.prefix).name})"], check=True,
                   capture_output=True)
    return name


def execute_notebook(name: str, parameters: dict, output_dir: str | Path, notebooks_dir: str | Path | None = None,
                     kernel_name: str | None = None, cwd: str | Path | None = None):
    """Execute notebooks/<name>.ipynb headless with papermill; the executed copy goes to output_dir."""
    import papermill as pm
    nb_dir = Path(notebooks_dir or REPO / "notebooks")
    out = Path(output_dir) / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(str(nb_dir / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name=kernel_name or ensure_kernel(), cwd=str(cwd or nb_dir),
                               progress_bar=False)


def _match_smoke_cache(results: Path) -> None:
    """results/smoke is a cache of the embedded default's answers: when the shipped weights changed (a new
    miniature was pulled or trained), clear it, so the smoke figures are redrawn instead of the runner refusing
    to resume (its meta.json records the weights) or reading back another model's records."""
    import shutil

    from focuslib.models import weights_fingerprint
    from focuslib.offline.embedded import embedded_default
    now = weights_fingerprint(embedded_default()[0]) or ""
    mark = results / ".weights"
    if results.exists() and any(results.iterdir()) and (not mark.exists() or mark.read_text() != now):
        print(f"{results}: written by other weights than the embedded default's ({now}); cleared", flush=True)
        shutil.rmtree(results)
    results.mkdir(parents=True, exist_ok=True)
    mark.write_text(now)


def main(argv=None) -> int:
    """`python -m focuslib.report [--smoke] [--model M] [--only NB ...]`: run the notebooks (make figures)."""
    import argparse
    import time
    ap = argparse.ArgumentParser(prog="python -m focuslib.report", description=main.__doc__)
    ap.add_argument("--smoke", action="store_true", help="embedded default model, synthetic data, CPU, minutes")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--data", default=None, help="local benchmark root (one sub-directory per benchmark)")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--figures-dir", default=None)
    ap.add_argument("--only", nargs="+", default=None, help="notebook names (default: all six)")
    a = ap.parse_args(argv)
    results = Path(a.results_dir or (REPO / ("results/smoke" if a.smoke else "results")))
    figures = Path(a.figures_dir or (REPO / ("figures/smoke" if a.smoke else "figures")))
    params = smoke_parameters(results, figures) if a.smoke else {"results_dir": str(results),
                                                                  "figures_dir": str(figures)}
    for k in ("model", "device", "dtype", "limit", "data"):
        if getattr(a, k) is not None:
            params[k] = getattr(a, k)
    if a.smoke and a.results_dir is None and a.model is None:
        _match_smoke_cache(results)
    kernel = ensure_kernel()
    for nb in a.only or NOTEBOOKS:
        t0 = time.time()
        execute_notebook(nb, params, results / "notebooks", kernel_name=kernel)
        print(f"{nb}: {time.time() - t0:.0f} s -> {figures} (executed notebook: {results / 'notebooks' / nb}.ipynb)",
              flush=True)
    return 0


_STR, _INT, _NUM = (str,), (int,), (int, float)


NOTEBOOK_PARAMETERS: dict[str, tuple[str, tuple, bool]] = {  # name -> (kind, element types, None allowed)
    "model": ("one", _STR, False), "benchmarks": ("list", _STR, False), "methods": ("list", _STR, False),
    "n_steps": ("list", _INT, False), "limit": ("one", _INT, True), "device": ("one", _STR, True),
    "dtype": ("one", _STR, False), "data": ("one", _STR, True), "results_dir": ("one", _STR, True),
    "figures_dir": ("one", _STR, True), "smoke": ("one", (bool,), False), "benchmark": ("one", _STR, False),
    "sample_index": ("one", _INT, False), "image_path": ("one", _STR, True), "question": ("one", _STR, True),
    "k": ("one", _INT, True), "s_max": ("one", _INT, True), "no_overrun_steps": ("list", _INT, False),
    "ablation_benchmarks": ("list", _STR, False), "ablation_n_steps": ("one", _INT, True),
    "hp_benchmark": ("one", _STR, False), "hp_n_steps": ("one", _INT, True), "n_samples": ("one", _INT, False),
    "seed": ("one", _INT, False), "s_max_values": ("list", _INT, False), "s_dist_values": ("list", _NUM, False),
    "nms_values": ("list", _NUM, False), "growth_rule": ("one", _STR, False), "eff_benchmark": ("one", _STR, False),
    "measure_flops": ("one", (bool,), False), "qual_benchmark": ("one", _STR, False),
    "n_examples": ("one", _INT, False),
}


def check_parameters(ns: dict) -> None:
    """Validate a notebook's papermill parameters in `ns` (its globals()) against NOTEBOOK_PARAMETERS.

    Raises TypeError naming the parameter, what it got and how to pass it (`-y "n_steps: [1, 2]"`); a
    string where a list is expected (papermill's `-p n_steps "[1, 2]"`) would otherwise iterate characters."""
    def ok(v, types):
        return isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
    for name, (kind, types, nullable) in NOTEBOOK_PARAMETERS.items():
        if name not in ns:
            continue
        v = ns[name]
        if v is None and nullable:
            continue
        want = " or ".join(t.__name__ for t in types)
        if kind == "list":
            if not isinstance(v, (list, tuple)) or not all(ok(x, types) for x in v):
                raise TypeError(f"parameter {name} must be a list of {want}, got {v!r} ({type(v).__name__}); "
                                f"pass lists as YAML: papermill ... -y \"{name}: [1, 2]\" (papermill -p gives a string)")
        elif not ok(v, types):
            raise TypeError(f"parameter {name} must be {want}{' or None' if nullable else ''}, got {v!r} "
                            f"({type(v).__name__}); papermill -p NAME VALUE parses numbers, True/False and None")
