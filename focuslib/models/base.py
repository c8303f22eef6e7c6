"""The model-adapter interface: everything model-specific FOCUS needs, nothing more.

An adapter wraps a Hugging Face model + processor and offers five things:
  relevance_pass(image, target)   one forward of "Is there a {target} in the image?" with the KV
                                  cache -> cached values per layer, the target's token positions
                                  and the token layout (grid of sequence positions + pixel boxes)
  existence_logits(images, target) [B, 2] (l_yes, l_no) for many crops in ONE batched forward
  generate(images, text)          the final open-ended answer
  generate_text(prompt)           text-only continuation (target extraction by ICL)
  calls                           a Counter of every model call, by purpose

The token layout is data (`TokenLayout`), so `search` never needs to know a model family.
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

EXISTENCE_PROMPT = "Is there a {target} in the image?"  # sec. 3.2 / A.5, verbatim


@dataclass
class TokenLayout:
    """Where the relevance grid sits in the sequence and in the ORIGINAL image.

    positions:  `[h, w]` long, sequence index of the visual token of each grid cell.
    cell_boxes: `[h, w, 4]` float, (x0, y0, x1, y1) of each cell in original-image pixels
                (zero-area for cells that lie entirely in padding).
    image_size: (W, H) of the original image.
    """
    positions: torch.Tensor
    cell_boxes: torch.Tensor
    image_size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.positions.shape)

    @property
    def valid(self) -> torch.Tensor:
        """`[h, w]` bool: cells that cover some pixels of the original image."""
        b = self.cell_boxes
        return (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])

    def pooled(self, factor: int) -> "TokenLayout":
        """Layout of a map average-pooled by `factor` (ceil mode): each cell = union of its cells."""
        if factor <= 1:
            return self
        h, w = self.shape
        H, W = math.ceil(h / factor), math.ceil(w / factor)
        boxes = torch.zeros(H, W, 4)
        pos = torch.full((H, W), -1, dtype=torch.long)  # pooled cells have no single position
        valid = self.valid
        for r in range(H):
            for c in range(W):
                sub = self.cell_boxes[r * factor:(r + 1) * factor, c * factor:(c + 1) * factor]
                ok = valid[r * factor:(r + 1) * factor, c * factor:(c + 1) * factor]
                if ok.any():
                    s = sub[ok]
                    boxes[r, c] = torch.stack([s[:, 0].min(), s[:, 1].min(), s[:, 2].max(), s[:, 3].max()])
        return TokenLayout(pos, boxes, self.image_size)


@dataclass
class RelevancePass:
    """What one existence forward pass over the whole image gives FOCUS."""
    values: list[torch.Tensor]          # per decoder layer, `[H_kv, N, D]` cached values (one sequence)
    target_idx: torch.Tensor            # `[s]` sequence positions of the target's text tokens
    target_tokens: list[str]
    layout: TokenLayout
    yes_no: torch.Tensor                # `[2]` (l_yes, l_no) at the last position
    keys_norope: list[torch.Tensor] | None = None  # per layer `[H_kv, N, D]` k_proj outputs (K-K ablation)
    seq_len: int = 0


def yes_confidence(yes_no: torch.Tensor) -> torch.Tensor:
    """c_yes = 2 * (softmax([l_yes, l_no])_yes - 0.5), in [-1, 1] (A.5 eq. 5). `[..., 2] -> [...]`."""
    return 2.0 * (torch.softmax(yes_no.float(), dim=-1)[..., 0] - 0.5)


class MLLM(ABC):
    """Base adapter. Subclasses implement the prompt format, input building and token layout."""

    family: str = "?"
    multi_image: bool = False   # global-local models answer on interleaved images (A.5)

    def __init__(self, model, processor, name: str = ""):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched last-position logits stay at index -1
        self.name = name
        self.weights_id: str | None = None   # load_mllm sets it (weights_fingerprint): results are tied to it
        self.calls: Counter = Counter()
        self._answer_ids: dict[str, int] = {}

    # ---- model specifics -------------------------------------------------------------
    @abstractmethod
    def prompt(self, text: str, n_images: int) -> str:
        """The model's chat format around a user turn with `n_images` images, ending where the answer starts."""

    @classmethod
    def load_processor(cls, name: str, **kw):
        """The checkpoint's processor (load_mllm calls it); adapters whose processor class transformers
        cannot infer, or must patch, override it."""
        from transformers import AutoProcessor   # transformers loads lazily (seconds): only when a model does
        return AutoProcessor.from_pretrained(name, **kw)

    @abstractmethod
    def build_inputs(self, images: list[list[Image.Image]], texts: list[str], offsets: bool = False):
        """Processor call for a batch: `images[b]` are the images of prompt `texts[b]`. Returns a BatchFeature;
        offsets=True adds the tokenizer's `offset_mapping` (relevance_pass finds the target's tokens with it)."""

    @abstractmethod
    def layout(self, image: Image.Image, inputs, index: int = 0) -> TokenLayout:
        """Token layout of the relevance grid for `image` processed into `inputs[index]`."""

    @property
    @abstractmethod
    def decoder_layers(self) -> list[torch.nn.Module]:
        """The LLM's decoder layers (each with .self_attn.k_proj / v_proj)."""

    # ---- generic -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    def answer_token_id(self, word: str) -> int:
        """Id of the first token the model would emit for `word` as its answer (e.g. "Yes")."""
        if word not in self._answer_ids:
            p = self.prompt("Is there a cat in the image?", 0)
            a = self.tokenizer(p, add_special_tokens=False)["input_ids"]
            b = self.tokenizer(p + self.answer_prefix + word, add_special_tokens=False)["input_ids"]
            if b[:len(a)] != a or len(b) == len(a):
                raise RuntimeError(f"cannot isolate the answer token for {word!r} with this tokenizer")
            self._answer_ids[word] = b[len(a)]
        return self._answer_ids[word]

    answer_prefix: str = " "

    def _to_device(self, inputs):
        dtype = self.model.dtype
        out = {}
        for k, v in inputs.items():
            if torch.is_tensor(v):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            out[k] = v
        return out

    def _target_positions(self, text: str, span: tuple[int, int], inputs, index: int = 0) -> torch.Tensor:
        """Sequence positions of the tokens covering characters `span` of the prompt `text`.

        Offsets refer to the processor's expanded text (image placeholders repeated), so we
        measure from the END of the text, which the expansion does not touch.
        """
        offsets = inputs["offset_mapping"][index]
        mask = inputs["attention_mask"][index].bool()
        ends = offsets[:, 1].clone()
        ends[~mask] = 0
        total = int(ends.max())
        s0 = total - (len(text) - span[0])
        s1 = total - (len(text) - span[1])
        hit = (offsets[:, 0] < s1) & (offsets[:, 1] > s0) & mask & (offsets[:, 1] > offsets[:, 0])
        idx = torch.nonzero(hit).flatten()
        if idx.numel() == 0:
            raise RuntimeError(f"target tokens not found for span {span} of {text!r}")
        return idx

    def grid_layout(self, image: Image.Image) -> TokenLayout:
        """The token layout alone (processor only, no forward pass), e.g. for the random-map ablation."""
        text = self.prompt(EXISTENCE_PROMPT.format(target="object"), 1)
        return self.layout(image, self.build_inputs([[image]], [text]))

    @torch.no_grad()
    def relevance_pass(self, image: Image.Image, target: str, keys: bool = False,
                       layers: list[int] | None = None) -> RelevancePass:
        """One forward pass of the existence prompt on the whole image.

        The values are read where the cache would get them (each layer's `v_proj` output, which RoPE
        never touches), so no KV cache is built: keys are never stored, and with `layers` only those
        layers' values are kept (`values[l]` is None elsewhere). Logits are computed for the last
        position only: on an HR-8K image a full `[N, vocab]` logit tensor would be gigabytes.
        """
        question = EXISTENCE_PROMPT.format(target=target)
        text = self.prompt(question, 1)
        start = text.rindex(question) + question.index(target)
        inputs = self.build_inputs([[image]], [text], offsets=True)
        t_idx = self._target_positions(text, (start, start + len(target)), inputs)
        lay = self.layout(image, inputs)
        keep = range(self.num_layers) if layers is None else sorted(set(layers))
        vals: dict[int, torch.Tensor] = {}
        ks: dict[int, torch.Tensor] = {}
        hooks = []
        for i in keep:
            attn = self.decoder_layers[i].self_attn
            hooks.append(attn.v_proj.register_forward_hook(
                lambda m, a, out, i=i: vals.__setitem__(i, out.detach()[0])))
            if keys:
                hooks.append(attn.k_proj.register_forward_hook(
                    lambda m, a, out, i=i: ks.__setitem__(i, out.detach()[0])))
        try:
            model_inputs = {k: v for k, v in inputs.items() if k != "offset_mapping"}
            out = self.model(**self._to_device(model_inputs), use_cache=False, logits_to_keep=1)
        finally:
            for h in hooks:
                h.remove()
        self.calls["relevance"] += 1
        D = self._head_dim()
        heads = lambda x: x.view(x.shape[0], -1, D).transpose(0, 1)   # [N, H*D] -> [H, N, D]
        values = [heads(vals[i]) if i in vals else None for i in range(self.num_layers)]
        keys_norope = [heads(ks[i]) if i in ks else None for i in range(self.num_layers)] if keys else None
        logits = out.logits[0, -1]
        del out
        yes_no = torch.stack([logits[self.answer_token_id("Yes")], logits[self.answer_token_id("No")]]).float()
        ids = inputs["input_ids"][0]
        return RelevancePass(values=values, target_idx=t_idx.to(self.device),
                             target_tokens=self.tokenizer.convert_ids_to_tokens(ids[t_idx].tolist()),
                             layout=lay, yes_no=yes_no.cpu(), keys_norope=keys_norope, seq_len=ids.numel())

    def _head_dim(self) -> int:
        """Head dimension of the LLM (the cache's D)."""
        cfg = self.model.config.get_text_config(decoder=True)
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    def _forward_batch(self, inputs, **kw):
        """A batched forward; families whose padded sequences need explicit positions override this."""
        return self.model(**inputs, **kw)

    # crops whose token counts differ (OneVision tiles, Qwen2.5-VL pixels) are batched by length so the
    # padding of a forward stays within this fraction of its real tokens (results are per crop, unchanged)
    pad_slack: float = 0.25
    # ... and a forward holds at most this many (padded) image tokens: about one Qwen2.5-VL prefill of an
    # HR-8K image, so verifying large crops never needs more activation memory than answering on the image
    max_batch_tokens: int = 16384

    def length_groups(self, images: list[Image.Image]) -> list[list[int]]:
        """Indices of `images` in forwards: sorted by image-token count, a new group whenever padding to the
        group's longest would exceed `pad_slack` of its real tokens or the group would pass `max_batch_tokens`.
        One group when all counts are equal and within the budget (always for LLaVA-1.5: 576 tokens)."""
        count = getattr(self, "num_image_tokens", None)
        if count is None or len(images) < 2:
            return [list(range(len(images)))]
        n = [count(im.size) for im in images]
        if len(set(n)) == 1 and len(n) * n[0] <= self.max_batch_tokens:
            return [list(range(len(images)))]
        groups: list[list[int]] = []
        for i in sorted(range(len(images)), key=lambda i: n[i]):
            g = groups[-1] if groups else None
            padded = (len(g) + 1) * n[i] if g is not None else 0
            if (g is not None and padded <= self.max_batch_tokens
                    and padded <= (1 + self.pad_slack) * (sum(n[j] for j in g) + n[i])):
                g.append(i)
            else:
                groups.append([i])
        return groups

    @torch.no_grad()
    def ask_yes_no(self, images: list[Image.Image], question: str, purpose: str | None = None) -> torch.Tensor:
        """`[B, 2]` (l_yes, l_no) at the last position for `question` about each image: batched forwards
        (one, unless `length_groups` splits crops of very different token counts). With `purpose`, each image
        counts as one forward pass in `calls[purpose]` (A.2, decisions.md D22); without, the caller counts."""
        if not images:
            return torch.zeros(0, 2)
        if purpose:
            self.calls[purpose] += len(images)
        text = self.prompt(question, 1)
        ids = [self.answer_token_id("Yes"), self.answer_token_id("No")]
        out = torch.zeros(len(images), 2)
        for g in self.length_groups(images):
            inputs = self._to_device(self.build_inputs([[images[i]] for i in g], [text] * len(g)))
            res = self._forward_batch(inputs, use_cache=False, logits_to_keep=1)
            out[g] = res.logits[:, -1][:, ids].float().cpu()
            del res, inputs
        return out

    @torch.no_grad()
    def ask_views(self, images: list[Image.Image], question: str, purpose: str | None = None) -> torch.Tensor:
        """`[1, 2]` (l_yes, l_no) of `question` about several images in ONE prompt (multi-image models:
        ZoomEye's global view + zoomed view); one forward pass, counted once in `calls[purpose]`."""
        inputs = self._to_device(self.build_inputs([list(images)], [self.prompt(question, len(images))]))
        out = self._forward_batch(inputs, use_cache=False, logits_to_keep=1)
        if purpose:
            self.calls[purpose] += 1
        return out.logits[:, -1][:, [self.answer_token_id("Yes"), self.answer_token_id("No")]].float().cpu()

    def existence_logits(self, images: list[Image.Image], target: str) -> torch.Tensor:
        """`[B, 2]` (l_yes, l_no) for each image with the existence prompt, in ONE batched forward."""
        logits = self.ask_yes_no(images, EXISTENCE_PROMPT.format(target=target))
        if images:
            self.calls["verify"] += 1
            self.calls["verify_crops"] += len(images)
        return logits

    # ---- generation: our own greedy loop ---------------------------------------------------
    # Every generation states its settings: greedy argmax, the model's end-of-turn ids, a token cap,
    # nothing else. transformers' `generate` fills unset fields from the checkpoint's generation_config
    # (Qwen2.5-VL ships repetition_penalty 1.05, do_sample true, temperature / top_p / top_k), which
    # would change greedy answers and the ICL targets (issue 13, decisions D26); a plain loop over
    # the model's forward cannot inherit any of it.

    def stop_ids(self) -> set[int]:
        """End-of-turn token ids: the checkpoint's eos id(s) and the tokenizer's (not sampling settings)."""
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = set(ids if isinstance(ids, (list, tuple)) else [] if ids is None else [ids])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _greedy(self, inputs: dict, max_new_tokens: int, stop_at_newline: bool = False,
                past=None, text_only: bool = False) -> list[int]:
        """Greedy decoding of ONE sequence. `inputs` are the model inputs of the (uncached) prompt part;
        `past` a cache holding the tokens before it. Logits of the last position only. Stops at an
        end-of-turn id, after `max_new_tokens`, or (stop_at_newline) at the first newline that follows
        some text. Text-only calls pass explicit positions (Qwen2.5-VL would otherwise reuse rope deltas
        left by an earlier image prompt)."""
        stop = self.stop_ids()
        new: list[int] = []
        ids = inputs["input_ids"]
        start = 0 if past is None else past.get_seq_length()
        step = dict(inputs)
        cache_kw = _cache_kwarg(self.model)
        for _ in range(max_new_tokens):
            if text_only:
                n = step["input_ids"].shape[1]
                step["position_ids"] = torch.arange(start, start + n, device=ids.device)[None]
            out = self.model(**step, **{cache_kw: past}, use_cache=True, logits_to_keep=1)
            past = _out_cache(out)
            start += step["input_ids"].shape[1]
            tok = int(out.logits[0, -1].argmax())
            del out
            if tok in stop:
                break
            new.append(tok)
            if stop_at_newline:
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                if "\n" in text.lstrip():   # a newline after some text ends the line we read
                    break
            # one unpadded sequence: no mask needed (Qwen2.5-VL then adds its rope deltas to the position)
            step = {"input_ids": torch.tensor([[tok]], device=ids.device)}
        return new

    @torch.no_grad()
    def generate(self, images: list[Image.Image], text: str, max_new_tokens: int = 16,
                 purpose: str = "answer") -> str:
        """Greedy open-ended answer to `text` about `images` (one prompt), settings as `_greedy`."""
        prompt = self.prompt(text, len(images))
        inputs = self._to_device(self.build_inputs([list(images)], [prompt]))
        new = self._greedy(inputs, max_new_tokens)
        self.calls[purpose] += 1
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    # the few-shot target prompt is the same for every question: its KV is computed once and reused
    min_prefix_tokens: int = 32

    def clear_prefix_cache(self) -> None:
        self._prefix = None
        self._last_text_ids = None

    def _prefix_cache(self, ids: list[int]):
        """(cache holding `ids[:P]`, P) for a text-only prompt, or (None, 0).

        The cached prefix is the longest token prefix shared with earlier prompts (found from two
        calls, then only ever shortened), so the ICL header and examples are computed once per model
        and nothing about the prompt format is assumed here."""
        from transformers import DynamicCache

        prefix = getattr(self, "_prefix", None)
        if prefix is not None:
            pids, kv = prefix
            n = _common_prefix(ids, pids)
            if n < self.min_prefix_tokens:
                prefix = None
            elif n < len(pids):
                prefix = (pids[:n], [(k[:, :, :n], v[:, :, :n]) for k, v in kv])
        if prefix is None:
            last = getattr(self, "_last_text_ids", None)
            self._last_text_ids = ids
            n = _common_prefix(ids, last) if last is not None else 0
            if n < self.min_prefix_tokens:
                self._prefix = None
                return None, 0
            pids = ids[:n]
            out = self.model(input_ids=torch.tensor([pids], device=self.device), use_cache=True,
                             position_ids=torch.arange(n, device=self.device)[None], logits_to_keep=1)
            c = _out_cache(out)
            prefix = (pids, [(c.layers[i].keys, c.layers[i].values) for i in range(len(c.layers))])
            self.calls["prefix_cache"] += 1
        self._prefix = prefix
        pids, kv = prefix
        P = min(len(pids), len(ids) - 1)          # at least one prompt token runs through the model
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(kv):
            cache.update(k[:, :, :P], v[:, :, :P], i)
        return cache, P

    @torch.no_grad()
    def generate_text(self, prompt: str, max_new_tokens: int = 24, purpose: str = "targets",
                      use_prefix_cache: bool = True) -> str:
        """Greedy text-only continuation of a raw prompt (no chat format), cut at the first newline.

        Generation stops at that newline (nothing after it is read) and after `max_new_tokens`; the
        prompt's prefix shared with earlier calls is served from a cache (`_prefix_cache`)."""
        ids = self.tokenizer(prompt)["input_ids"]
        cache, P = self._prefix_cache(ids) if use_prefix_cache else (None, 0)
        inputs = {"input_ids": torch.tensor([ids[P:]], device=self.device)}
        new = self._greedy(inputs, max_new_tokens, stop_at_newline=True, past=cache, text_only=True)
        self.calls[purpose] += 1
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return text.strip().split("\n")[0].strip()


def chatml_prompt(system: str, image: str, sep: str, text: str | Sequence[str], n_images: int) -> str:
    """One ChatML user turn (LLaVA-OneVision's qwen_1_5 conversation, Qwen2.5-VL's template), ending where the
    answer starts. `image`: the text one image stands for; `sep`: what follows the images ("\n" for OneVision).
    text = question -> `image * n_images + sep + question`; text = [caption per image..., question] -> each
    image followed by sep + its caption + "\n", then the question (ZoomEye's multi-image prompt, D10)."""
    if isinstance(text, str):
        body = image * n_images + sep + text
    else:
        *captions, text = text
        if len(captions) != n_images:
            raise ValueError(f"{len(captions)} captions for {n_images} images")
        body = "".join(f"{image}{sep}{c}\n" for c in captions) + text
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return head + "<|im_start|>user\n" + body + "<|im_end|>\n<|im_start|>assistant\n"


def _cache_kwarg(model) -> str:
    """The forward argument that takes a KV cache: transformers 5.25 renamed `past_key_values` to `cache` (the old
    name still works but warns in every notebook cell until 5.40); 5.23-5.24 know only `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _out_cache(out):
    """The KV cache a forward returned, under either name (see `_cache_kwarg`)."""
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def calls_since(mllm: MLLM, before: Counter) -> dict[str, int]:
    """Model calls by purpose since the snapshot `before`, plus `total` (crops are not calls)."""
    calls = Counter(mllm.calls)
    calls.subtract(before)
    calls = {k: v for k, v in calls.items() if v}
    calls["total"] = sum(v for k, v in calls.items() if k != "verify_crops")
    return calls
