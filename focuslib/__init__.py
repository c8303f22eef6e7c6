"""focuslib: FOCUS (NeurIPS 2025) — fine-grained VQA guided by internal MLLM representations.

    from focuslib import load_mllm, Focus, preset
    mllm = load_mllm("llava-hf/llava-1.5-7b-hf")
    trace = Focus(mllm, preset(mllm.family, "vstar", n_steps=8)).answer("img.jpg", "What is the color of the car?")

Focus, Vanilla, ZoomEye and ViCrop are Solvers (`make_solver(mllm, method, config)`); docs/architecture.md.
"""

from focuslib.core.config import FocusConfig, preset
from focuslib.core.relevance import object_relevance
from focuslib.core.search import Focus
from focuslib.core.trace import Trace
from focuslib.eval.solver import make_solver, Solver
from focuslib.images import FocusInputError, load_image
from focuslib.models import list_families, load_mllm

__all__ = ["Focus", "Trace", "Solver", "make_solver", "FocusConfig", "preset", "load_mllm", "list_families",
           "object_relevance", "load_image", "FocusInputError"]
__version__ = "0.1.0"
