"""Evaluation: benchmarks (as data), metrics (paper-exact scoring, recall, cost), schemes (logits matching, LLM judge),
solver (the Solver protocol the runner drives), runner (resumable, sharded runs), baselines (ZoomEye, ViCrop)."""
