"""Generation states its own settings (issue 13 #3) and the text-only prefix cache is exact (issue 18).

A checkpoint's generation_config (Qwen2.5-VL-7B-Instruct ships repetition_penalty 1.05 and sampling
defaults) must not reach our greedy calls. Reference: a literal greedy loop that recomputes the whole
sequence at every step and takes the argmax, no cache, no logits processor.
"""
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from focuslib.models import load_mllm
from focuslib.core.targets import icl_prompt

# the kind of generation_config Qwen2.5-VL-7B-Instruct ships (repetition_penalty 1.05, sampling on)
CHECKPOINT_SAMPLING = dict(repetition_penalty=1.05, do_sample=True, temperature=0.1, top_p=0.001, top_k=1)


def _fresh(path, **gen):
    m = load_mllm(str(path), device="cpu", dtype="float32")
    for k, v in gen.items():
        setattr(m.model.generation_config, k, v)
    return m


@torch.no_grad()
def reference_greedy(m, inputs: dict, n: int) -> list[int]:
    """Argmax of the last position of the FULL sequence, recomputed at every step (no cache)."""
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    stop, out = m.stop_ids(), []
    for _ in range(n):
        logits = m.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **extra).logits
        tok = int(logits[0, -1].argmax())
        if tok in stop:
            break
        out.append(tok)
        ids = torch.cat([ids, torch.tensor([[tok]])], 1)
        # per-token inputs (Qwen's mm_token_type_ids) grow with the text: a new token is text (0)
        extra = {k: torch.cat([v, v.new_zeros(1, 1)], 1) if k.endswith("token_type_ids") else v
                 for k, v in extra.items()}
    return out


def test_checkpoint_repetition_penalty_does_not_change_the_icl_targets(tiny_llava_path):
    m = _fresh(tiny_llava_path, **CHECKPOINT_SAMPLING)
    prompt = icl_prompt("What is the color of the car?")
    enc = m.tokenizer(prompt, return_tensors="pt")
    ref = m.tokenizer.decode(reference_greedy(m, dict(enc), 24), skip_special_tokens=True)
    ref = ref.strip().split("\n")[0].strip()
    # the way the old code called transformers: the checkpoint's penalty applies and changes the text
    hf = m.model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
    hf = m.tokenizer.decode(hf[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip().split("\n")[0]
    assert hf.strip() != ref, "the planted penalty should matter on this model (else the test proves nothing)"
    assert m.generate_text(prompt) == ref


@pytest.mark.parametrize("fixture", ["tiny_llava_path", "tiny_qwen_path"])
def test_generate_is_plain_greedy_whatever_the_checkpoint_says(fixture, request):
    m = _fresh(request.getfixturevalue(fixture), repetition_penalty=3.0, no_repeat_ngram_size=2,
               do_sample=True, temperature=0.1, top_k=1)
    img = Image.new("RGB", (500, 300), (30, 120, 200))
    q = "What is the color of the car?"
    inputs = m._to_device(m.build_inputs([[img]], [m.prompt(q, 1)]))
    ref = m.tokenizer.decode(reference_greedy(m, inputs, 16), skip_special_tokens=True).strip()
    hf = m.model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
    hf = m.tokenizer.decode(hf[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert hf != ref, "the planted penalties should matter on this model"
    assert m.generate([img], q) == ref


@pytest.mark.parametrize("fixture", ["tiny_llava_path", "tiny_ov_path", "tiny_qwen_path"])
def test_cached_decoding_passes_the_cache_under_the_name_forward_takes(fixture, request):
    """transformers 5.25 renamed forward's `past_key_values` to `cache`; the old name warns in every notebook cell.
    Decoding must use whichever name this transformers has, warn nothing, and still equal the uncached greedy."""
    import inspect
    import warnings
    from focuslib.models.base import _cache_kwarg
    m = _fresh(request.getfixturevalue(fixture))
    params = inspect.signature(m.model.forward).parameters
    assert _cache_kwarg(m.model) == ("cache" if "cache" in params else "past_key_values")
    img = Image.new("RGB", (400, 300), (200, 30, 30))
    inputs = m._to_device(m.build_inputs([[img]], [m.prompt("What is the color of the car?", 1)]))
    ref = m.tokenizer.decode(reference_greedy(m, inputs, 6), skip_special_tokens=True).strip()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        got = m.generate([img], "What is the color of the car?", max_new_tokens=6)
        m.generate_text(icl_prompt("What is the color of the car?"), max_new_tokens=4)   # the prefix-cache path
    assert got == ref


def _embedded_tokens(m):
    """Counter of tokens that go through the LLM's embedding (hook), to see what the cache saves."""
    seen = []
    h = m.model.get_input_embeddings().register_forward_hook(lambda mod, a, out: seen.append(a[0].numel()))
    return seen, h


@pytest.mark.parametrize("fixture", ["tiny_llava_path", "tiny_ov_path", "tiny_qwen_path"])
def test_prefix_cache_gives_the_same_text_and_computes_the_shots_once(fixture, request):
    m = _fresh(request.getfixturevalue(fixture))
    img = Image.new("RGB", (300, 300), (200, 30, 30))
    qs = ["What is the color of the car?", "How many dogs are in the picture?",
          "Is the cat on the left or right side of the red sign?", "What is written on the sign?"]
    seen, h = _embedded_tokens(m)
    try:
        for q in qs:
            m.generate([img], "Describe it.", max_new_tokens=2)    # image prompts in between (Qwen rope deltas)
            seen.clear()
            got = m.generate_text(icl_prompt(q))
            assert got == m.generate_text(icl_prompt(q), use_prefix_cache=False), q
            cached_prefill = seen[0]
    finally:
        h.remove()
    n_prompt = len(m.tokenizer(icl_prompt(qs[-1]))["input_ids"])
    assert m.calls["prefix_cache"] == 1                       # the shots' KV was computed once
    assert cached_prefill < n_prompt / 4                      # later prompts run only their own question
    assert len(m._prefix[0]) >= 0.75 * n_prompt


class _Scripted(torch.nn.Module):
    """Stands in for the model: emits a fixed token script, one token per forward."""

    def __init__(self, script, dtype=torch.float32):
        super().__init__()
        self.script, self.calls, self.dtype = list(script), 0, dtype
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = SimpleNamespace(eos_token_id=None)

    def forward(self, input_ids, past_key_values=None, **kw):
        tok = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        logits = torch.full((1, 1, 1000), -1.0)
        logits[0, -1, tok] = 1.0
        n = (0 if past_key_values is None else past_key_values.n) + input_ids.shape[1]
        return SimpleNamespace(logits=logits, past_key_values=SimpleNamespace(n=n, get_seq_length=lambda: n))


def test_text_generation_stops_at_the_first_newline_after_text(tiny_llava_path):
    m = _fresh(tiny_llava_path)
    tok = m.tokenizer
    head = tok("\n red car", add_special_tokens=False)["input_ids"]
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(nl) == 1 and head[0] == nl[0]
    script = head + nl + tok(" more words", add_special_tokens=False)["input_ids"]
    m.model = _Scripted(script)
    assert m.generate_text("Question: x\nTargets:", use_prefix_cache=False) == "red car"
    assert m.model.calls == len(head) + 1   # a leading newline does not stop it; the one after "red car" does
    m.model = _Scripted([script[1]] * 50)
    m.generate_text("Question: x\nTargets:", max_new_tokens=5, use_prefix_cache=False)
    assert m.model.calls == 5      # the cap holds


# ---- batched verification grouped by token count (issue 18) -------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_qwen_path", "tiny_ov_path"])
def test_crops_of_very_different_token_counts_go_in_separate_forwards_with_the_same_logits(fixture, request):
    m = _fresh(request.getfixturevalue(fixture))
    g = torch.Generator().manual_seed(0)
    crops = [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())
             for w, h in [(700, 650), (60, 60), (720, 660), (64, 56)]]
    n = [m.num_image_tokens(c.size) for c in crops]
    assert max(n) > 2 * min(n)
    groups = m.length_groups(crops)
    assert sorted(map(sorted, groups)) == [[0, 2], [1, 3]]            # small with small, large with large
    seen, h = _embedded_tokens(m)
    try:
        got = m.ask_yes_no(crops, "Is there a dog in the image?")
    finally:
        h.remove()
    assert len(seen) == 2
    assert sum(seen) < len(crops) * max(n)                              # less padding than one batch
    one = torch.cat([m.ask_yes_no([c], "Is there a dog in the image?") for c in crops])
    torch.testing.assert_close(got, one, rtol=1e-4, atol=1e-4)


def test_a_forward_never_holds_more_than_the_token_budget(tiny_qwen_path):
    m = _fresh(tiny_qwen_path)
    crops = [Image.new("RGB", (560, 560), (9, 99, 199))] * 5          # 400 tokens each
    assert m.length_groups(crops) == [[0, 1, 2, 3, 4]]
    m.max_batch_tokens = 1000
    assert m.length_groups(crops) == [[0, 1], [2, 3], [4]]


def test_equal_token_counts_stay_one_forward(tiny_llava):
    crops = [Image.new("RGB", s, (9, 99, 199)) for s in [(50, 80), (700, 300), (336, 336)]]
    assert tiny_llava.length_groups(crops) == [[0, 1, 2]]               # LLaVA: 576 tokens whatever the crop
