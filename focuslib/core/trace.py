"""What every solver returns and how it is timed (one trace family, one clock).

  Trace          one answer: the question, the targets, the regions examined, the final input, the answer, and
                 the cost (search forward passes, model calls by purpose, timings); `summary()` is its JSON record
  TargetTrace    FOCUS's search for one target: map, layout, ranked ROIs, the verified and chosen ones
  RoiTrace       one proposal: grid box on the map, pixel box, anchor, relevance score, c_yes
  BaselineTrace  a baseline's Trace (ZoomEye, ViCrop): per_target is a list of JSON-ready dicts, plus `method`
                 and method-specific `extra`
  Clock          named wall-time spans with device synchronisation at both ends (A.2's timings)
  begin_answer   what every solver's answer() does first: check the question, load the image, start counting
"""
from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

from focuslib.images import FocusInputError, load_image
from focuslib.models.base import TokenLayout


@dataclass
class RoiTrace:
    grid: tuple[int, int, int, int]   # (r0, c0, r1, c1) on the map
    box: tuple[int, int, int, int]    # (x0, y0, x1, y1) in the original image
    anchor: tuple[int, int]
    score: float                      # relevance at the anchor (proposal rank key)
    confidence: float | None = None   # c_yes in [-1, 1], None if not verified


@dataclass
class TargetTrace:
    target: str
    tokens: list[str]
    map: torch.Tensor                 # [h, w] object relevance map (sum 1)
    layout: TokenLayout               # the map's grid in the original image
    rois: list[RoiTrace]              # ranked proposals after NMS
    verified: list[int] = field(default_factory=list)   # indices into rois, in verification order
    best: int | None = None           # index into rois of the chosen ROI
    selected: list[int] = field(default_factory=list)   # type-2: ROIs above t_type2
    whole_image_yes: float | None = None                 # c_yes of the map pass itself
    qtype: int = 1                    # this target's type: 2 = every instance matters (decisions.md D8)
    query: str = ""                   # the name in the prompts (type-2: singular); "" = target

    def summary(self) -> dict:
        return {"target": self.target, "tokens": self.tokens, "map_shape": list(self.map.shape),
                "best": self.best, "verified": self.verified, "selected": self.selected,
                "qtype": self.qtype, "query": self.query, "rois": [asdict(r) for r in self.rois]}


@dataclass
class Trace:
    """One solver's answer to one question (FOCUS, vanilla; baselines: BaselineTrace)."""
    question: str
    targets: list[str]
    qtype: int
    target_source: str
    per_target: list[TargetTrace]
    chosen_boxes: list[tuple[int, int, int, int]]
    final_mode: str                   # whole | crop | union | canvas | multi-image
    final_size: tuple[int, int]
    answer: str
    search_fp: int
    model_calls: dict[str, int]
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    final_images: list[Image.Image] = field(default_factory=list, repr=False)
    layers: tuple[int, int] | None = None  # resolved half-open decoder-layer range of the maps (None: no map)

    def summary(self) -> dict:
        """JSON-friendly summary (no tensors, no images): the `trace` of a results record."""
        return {
            "question": self.question, "answer": self.answer, "targets": self.targets,
            "qtype": self.qtype, "target_source": self.target_source,
            "chosen_boxes": [list(b) for b in self.chosen_boxes], "final_mode": self.final_mode,
            "final_size": list(self.final_size), "search_fp": self.search_fp,
            "model_calls": dict(self.model_calls), "timings": dict(self.timings), "notes": list(self.notes),
            "layers": list(self.layers) if self.layers else None,
            "per_target": self.targets_summary(),
        }

    def targets_summary(self) -> list[dict]:
        return [t.summary() for t in self.per_target]


@dataclass
class BaselineTrace(Trace):
    """A baseline's Trace. per_target: [{"target", "rois": [{"box", "confidence", ...}], "verified": [i...],
    "best": i, "selected": [i...]}] -- the regions the search examined (V*Bench recall, D21)."""
    method: str = ""
    extra: dict = field(default_factory=dict)

    def targets_summary(self) -> list[dict]:
        return self.per_target

    def summary(self) -> dict:
        out = {"method": self.method, **super().summary(), "extra": self.extra}
        del out["layers"]
        return out


def synchronize(device) -> None:
    """Wait for the device's queued kernels (CUDA); a no-op elsewhere."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(device)


class Clock:
    """Named wall-time spans, synchronised with the device at both ends.

        clock = Clock(device)
        with clock("relevance"): ...      # clock.t["relevance"] sums every span of that name (s)
        with clock("total") as c: ...     # c.s: the length of the span that just ended (s)
    """

    def __init__(self, device="cpu"):
        self.device = device
        self.t: Counter[str] = Counter()
        self.s: float | None = None

    @contextmanager
    def __call__(self, name: str = "total"):
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            synchronize(self.device)
            self.s = time.perf_counter() - t0
            self.t[name] += self.s


def begin_answer(mllm, image, question) -> tuple[Image.Image, Counter, Clock]:
    """The start every solver's `answer()` shares: a clear error for an empty question (D14), the image
    loaded (path or PIL), a snapshot of the model's call counter (for `calls_since`) and a Clock."""
    if not isinstance(question, str) or not question.strip():
        raise FocusInputError("the question is empty")
    return load_image(image), Counter(mllm.calls), Clock(getattr(mllm, "device", "cpu"))
