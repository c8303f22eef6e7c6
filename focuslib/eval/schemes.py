"""Inference schemes beyond open-ended generation with options (the default, A.2 / D20).

logits matching (C.5, the V* / ZoomEye protocol on V*Bench): each option is a full sentence
  ("The color of the car is red."); the model sees image + question and the sentence as its answer;
  the score is the MEAN log-probability of the sentence's tokens; the highest score wins. V*Bench's
  sibling json lists the correct sentence first, so a prediction is correct iff option 0 wins.
  One forward pass per option (counted as calls["logits_match"]).

open-ended VQA judged by an LLM (C.2): the model answers the bare question without options; a judge
  LLM (Qwen/Qwen2.5-7B-Instruct in the paper) compares the answer with the correct option sentence.
  `LLMJudge(generate)` holds the prompt and the parsing; `LLMJudge.from_pretrained(name)` builds
  `generate` from any transformers causal LM with a chat template, decoded by the adapters' own greedy
  loop (`MLLM._greedy`): the checkpoint's generation_config (Qwen2.5-7B-Instruct ships repetition_penalty
  1.05 and sampling defaults) never applies (decisions.md D26).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from focuslib.models import default_device, resolve_dtype
from focuslib.models.base import MLLM


@torch.no_grad()
def option_logprob(mllm, images: Sequence[Image.Image], question: str, sentence: str) -> float:
    """Mean log-probability of `sentence` as the model's answer to `question` about `images`."""
    prompt = mllm.prompt(question, len(images))
    full = prompt + getattr(mllm, "answer_prefix", " ") + sentence
    tok = mllm.tokenizer
    a = tok(prompt, add_special_tokens=False)["input_ids"]
    b = tok(full, add_special_tokens=False)["input_ids"]
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    n = len(b) - common
    if n <= 0:
        raise ValueError(f"option sentence {sentence!r} produced no tokens")
    inputs = mllm._to_device(mllm.build_inputs([list(images)], [full]))
    logits = mllm.model(**inputs, use_cache=False).logits[0]
    mllm.calls["logits_match"] += 1
    ids = inputs["input_ids"][0]
    T = ids.numel()
    lp = torch.log_softmax(logits[T - n - 1:T - 1].float(), dim=-1)
    return float(lp.gather(1, ids[T - n:].unsqueeze(1)).mean())


def logits_match(mllm, images: Sequence[Image.Image], question: str, sentences: Sequence[str]) -> tuple[int, list[float]]:
    """(index of the best sentence, all scores). Ties go to the lowest index."""
    if not sentences:
        raise ValueError("logits matching needs option sentences (V*Bench's sibling json 'options')")
    scores = [option_logprob(mllm, images, question, s) for s in sentences]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return best, scores


JUDGE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
JUDGE_PROMPT = (
    "You are grading an answer to a question about an image. You cannot see the image; use the "
    "reference answer, which is correct.\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Answer to grade: {response}\n"
    "Does the answer to grade state the same thing as the reference answer for this question? "
    "Extra detail is fine; a different or missing value is not. "
    "Reply with one word: correct or incorrect.")


def parse_verdict(text: str) -> bool | None:
    """'correct' / 'yes' -> True, 'incorrect' / 'wrong' / 'no' -> False, the first such word wins; else None."""
    for w in re.findall(r"[a-z]+", (text or "").lower()):
        if w in ("incorrect", "wrong", "no", "false"):
            return False
        if w in ("correct", "yes", "true", "right"):
            return True
    return None


class _TextLM:
    """A text-only causal LM decoded by the adapters' greedy loop (argmax, end-of-turn ids, a token cap, nothing
    from the checkpoint's sampling settings; D26): the same `_greedy` / `stop_ids`, not a second loop."""
    _greedy = MLLM._greedy
    stop_ids = MLLM.stop_ids

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def continue_text(self, text: str, max_new_tokens: int) -> str:
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"].to(self.model.device)
        new = self._greedy({"input_ids": ids}, max_new_tokens, text_only=True)
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


class LLMJudge:
    """LLM-as-a-judge (C.2). `generate(prompt) -> str` is any text generator (a chat LLM, a script)."""

    def __init__(self, generate: Callable[[str], str], name: str = "custom"):
        self.generate = generate
        self.name = name
        self.calls = 0

    def prompt(self, question: str, reference: str, response: str) -> str:
        return JUDGE_PROMPT.format(question=question.strip(), reference=reference.strip(),
                                   response=(response or "").strip() or "(no answer)")

    def __call__(self, question: str, reference: str, response: str) -> dict:
        p = self.prompt(question, reference, response)
        raw = self.generate(p)
        self.calls += 1
        v = parse_verdict(raw)
        # unparsable verdicts count as wrong and are flagged for the manual review the paper did
        return {"correct": bool(v), "verdict": v, "raw": raw, "needs_review": v is None}

    @classmethod
    def from_pretrained(cls, name: str = JUDGE_MODEL, device: str | None = None, dtype="auto",
                        max_new_tokens: int = 8) -> "LLMJudge":
        """A transformers causal LM (default Qwen2.5-7B-Instruct, a GPU node) with our greedy decoding: the
        checkpoint's generation_config (repetition penalty, sampling) is ignored, only its eos ids are read."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or default_device()
        try:
            tok = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype, device)).to(device).eval()
        except OSError as e:
            raise RuntimeError(f"cannot load the judge {name!r}: {e}. Download it on a connected machine "
                               f"(`hf download {name} --local-dir DIR`) and pass its local path.") from e

        lm = _TextLM(model, tok)

        def generate(prompt: str) -> str:
            if tok.chat_template:
                text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
            else:
                text = prompt + "\n"
            return lm.continue_text(text, max_new_tokens)
        return cls(generate, name=name)


__all__ = ["option_logprob", "logits_match", "LLMJudge", "JUDGE_PROMPT", "JUDGE_MODEL", "parse_verdict"]
