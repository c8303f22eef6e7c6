"""The contract between the runner and a method: a Solver answers one question about one image with a Trace.

    class Solver(Protocol):
        mllm: MLLM                 # the adapter it runs on (focuslib.models.base.MLLM)
        config: ...                # a dataclass with at least `max_new_tokens` (runner: re-answers, meta.json)
        def answer(self, image, question, targets=None, answer_prompt=None) -> Trace

Request
    image          a path or a PIL image (focuslib.images.load_image checks and converts it)
    question       the bare question: what targets are extracted from and what the search prompts are about
    targets        the target names to use instead of extracting them (V*Bench's GT objects); "all X" = type-2
    answer_prompt  the text of the final answer when it differs from the question (lettered options,
                   a benchmark's answer instruction); default: the question
Response (focuslib.core.trace.Trace; baselines return its subclass BaselineTrace)
    answer, final_images (the input the answer was generated on: the logits scheme re-scores it),
    search_fp (forward passes of the search, A.2), model_calls (by purpose, plus "total"), timings (s, by step),
    per_target (the regions examined: V*Bench recall), summary() (the JSON `trace` of a results record).
    An empty question raises focuslib.images.FocusInputError.

Solvers: Focus (focuslib.core.search), Vanilla (here), ZoomEye and ViCrop (focuslib.eval.baselines);
`make_solver(mllm, method, config)` builds the one a runner method names. tests/test_contract.py checks every
solver on every registered model family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from focuslib.core.config import FocusConfig
from focuslib.core.search import Focus
from focuslib.core.trace import begin_answer, Trace
from focuslib.eval.baselines import BASELINE_METHODS, make_baseline
from focuslib.models.base import calls_since, MLLM


@runtime_checkable
class Solver(Protocol):
    mllm: MLLM
    config: Any

    def answer(self, image: str | Image.Image, question: str, targets: list[str] | None = None,
               answer_prompt: str | None = None) -> Trace: ...


@dataclass(frozen=True)
class VanillaConfig:
    max_new_tokens: int = 16


class Vanilla:
    """The base model on the whole image (the paper's vanilla rows): no search, one generation."""

    def __init__(self, mllm: MLLM, config: VanillaConfig | FocusConfig | None = None):
        self.mllm, self.config = mllm, config or VanillaConfig()

    def answer(self, image, question: str, targets: list[str] | None = None,
               answer_prompt: str | None = None) -> Trace:
        m = self.mllm
        image, before, clock = begin_answer(m, image, question)
        with clock("answer"):
            ans = m.generate([image], answer_prompt or question, max_new_tokens=self.config.max_new_tokens)
        clock.t["total"] = clock.t["answer"]
        return Trace(question=question, targets=list(targets or []), qtype=1, target_source="none", per_target=[],
                     chosen_boxes=[], final_mode="whole", final_size=image.size, answer=ans, search_fp=0,
                     model_calls=calls_since(m, before), timings=dict(clock.t), final_images=[image])


SOLVER_METHODS = ("vanilla", "focus", *BASELINE_METHODS)


def make_solver(mllm: MLLM, method: str, config: FocusConfig, **baseline_options) -> Solver:
    """The solver of a runner method; `config` is the FOCUS preset (vanilla and baselines take its
    max_new_tokens); baseline_options: a baseline's config fields (eval.baselines.make_baseline)."""
    if method == "focus":
        return Focus(mllm, config)
    if method == "vanilla":
        return Vanilla(mllm, VanillaConfig(max_new_tokens=config.max_new_tokens))
    return make_baseline(mllm, method, max_new_tokens=config.max_new_tokens, **baseline_options)
