"""The six notebooks execute headless (papermill) in smoke mode and write their figures and tables.

Smoke mode = the embedded random-weight tiny model on synthetic benchmarks, 2 samples, n_steps [1, 2]
(`focuslib.report.smoke_parameters`, the same parameters `make figures SMOKE=1` uses), so a notebook
that breaks fails `make test`.
"""
import pytest

from focuslib import report

EXPECTED = {
    "00_explore": ["00_explore_trace.png", "00_explore_trace.pdf", "00_explore_rois.csv"],
    "01_main_results": ["fig3_pareto.png", "fig3_pareto.pdf", "tab10_full_results.csv", "tab10_full_results.md",
                        "tab10_full_results.tex", "tab2_mme_rw_lite.csv", "tab11_mme_rw_lite_tasks.csv",
                        "tab4_large_objects.csv", "tab5_qwen.csv"],
    "02_ablations": ["tab3_ablations.csv", "tab3_ablations.tex", "fig4_steps.png", "fig4_steps.pdf", "fig4_steps.md"],
    "03_hyperparameters": ["tab12_hyperparameters.csv", "tab12_hyperparameters.png", "tab12_hyperparameters.pdf"],
    "04_efficiency": ["tab13_efficiency.csv", "tab14_cost.csv", "tab14_cost.png", "tab15_schemes.csv"],
    "05_qualitative": ["fig5_example_0.png", "fig5_example_0.pdf", "fig5_examples.csv"],
}
# tables whose CSV must show the paper's numbers beside ours
SIDE_BY_SIDE = {"01_main_results": "tab10_full_results.csv", "02_ablations": "tab3_ablations.csv",
                "03_hyperparameters": "tab12_hyperparameters.csv", "04_efficiency": "tab14_cost.csv"}


@pytest.fixture(scope="module")
def built_default():
    """Build the embedded default once, under a lock (parallel workers would race on .cache/)."""
    from filelock import FileLock

    from focuslib.offline.embedded import DEFAULT_CACHE, embedded_default
    DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(DEFAULT_CACHE / "tiny-llava-1.5.lock")):
        return embedded_default()[0]


def test_every_notebook_is_covered():
    assert sorted(EXPECTED) == sorted(report.NOTEBOOKS)


@pytest.mark.parametrize("name", report.NOTEBOOKS)
def test_notebook_smoke(name, tmp_path, built_default):
    figures = tmp_path / "figures"
    params = report.smoke_parameters(tmp_path / "results", figures)
    report.execute_notebook(name, params, tmp_path / "executed")
    missing = [f for f in EXPECTED[name] if not (figures / f).is_file() or (figures / f).stat().st_size == 0]
    assert not missing, f"{name} did not write {missing}; wrote {sorted(p.name for p in figures.iterdir())}"
    if name in SIDE_BY_SIDE:
        head = (figures / SIDE_BY_SIDE[name]).read_text().splitlines()[0]
        assert "paper (" in head and f"{report.ours_label(built_default)}" in head, head
        assert report.ours_label(built_default) in ("ours (miniature-llava-1.5, synthetic-trained)",
                                                    "ours (tiny-llava-1.5, random weights)")
