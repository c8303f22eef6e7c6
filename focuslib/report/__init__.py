"""Reporting for the notebooks: our runs and the paper's reported numbers, side by side.

The notebooks (notebooks/*.ipynb) stay thin; everything they reuse lives here, one job per module:

  tables     data/paper_results.csv (load_paper_results), our results -> long rows (run_rows, collect_results),
             side_by_side tables, save_table (CSV + markdown + LaTeX), the cost benchmark's tables
  plots      plot_trace / map_to_image (a trace over its image), pareto_plot / pareto_front (Fig. 3),
             qualitative_figure (Fig. 5 / 8-10), scaling_plot, save_figure (PNG + PDF)
  session    Session: one notebook's model, data, results dir and figures dir; `run()` = runner.evaluate
  notebooks  NOTEBOOKS, smoke_parameters, execute_notebook, ensure_kernel (papermill), check_parameters;
             `python -m focuslib.report` runs them all

`from focuslib import report; report.X` reaches every name of the four modules (the notebooks do this).
"""
# flake8: noqa: F401  (the names below are this package's API)
from focuslib.report.tables import (REPO, PAPER_CSV, COLUMNS, METRICS, FAMILY_TO_PAPER, PAPER_MODEL_NAMES,
    METHOD_NAMES, BENCH_NAMES, load_paper_results, paper_label, paper_rows, ours_label, setting_of, summary_rows,
    run_rows, collect_results, side_by_side, flat_columns, save_table, to_markdown, measure_column, parse_setting,
    sampled_summary, pick_examples, rois_table, BENCH_NUMERIC, BENCH_TO_PAPER, read_bench_methods, bench_vs_paper)
from focuslib.report.plots import (map_to_image, plot_trace, save_figure, pareto_front, point_label, pareto_points,
    pareto_plot, qualitative_figure, scaling_plot)
from focuslib.report.session import Session
from focuslib.report.notebooks import (NOTEBOOKS, smoke_parameters, KERNEL_NAME, ensure_kernel, execute_notebook,
    main, NOTEBOOK_PARAMETERS, check_parameters)
