"""Model adapters, one per family (each registers itself in models.registry), and `load_mllm` to load any of them
by hub id, alias or local path."""
from __future__ import annotations

import os
import re

import torch

from focuslib.models.base import EXISTENCE_PROMPT, MLLM, RelevancePass, TokenLayout, yes_confidence
from focuslib.models.llava import LlavaAdapter
from focuslib.models.onevision import OneVisionAdapter
from focuslib.models.qwen import QwenVLAdapter
from focuslib.models.registry import FAMILIES, family_of_model_type, hub_ids, list_families, register_family

HUB_IDS = hub_ids()   # alias -> hub id (the adapters above registered themselves)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")   # "org/name"; anything else is a local path


def download_hint(name: str) -> str:
    """What to run on a connected machine (the pinned huggingface_hub has `hf`; `huggingface-cli` is gone)."""
    return (f"on a connected machine run `hf download {name} --local-dir DIR`, copy DIR to this machine and "
            "pass its path (`--model DIR`), or try the embedded tiny model (`focus demo`)")


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(reachable, why) for the hub endpoint, in at most `timeout` s: HF_HUB_OFFLINE, then a TCP connect.

    Without it an unreachable hub costs ~28 s of retries per file before transformers gives up."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port} answers"
    except OSError as e:
        return False, f"{host}:{port} unreachable ({e.__class__.__name__}: {e})"


def cached_snapshot(name: str) -> str | None:
    """Local snapshot folder of hub id `name` if its config.json is in the HF cache, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
        f = try_to_load_from_cache(name, "config.json")
    except Exception:
        return None
    return os.path.dirname(f) if isinstance(f, str) else None


def resolve_source(name_or_path: str, probe_timeout: float = 3.0) -> tuple[str, dict]:
    """(name, from_pretrained kwargs) for a hub id, alias or local path; fails fast with ONE clear message.

    Local paths never get the network hint; a hub id that is neither reachable nor cached fails in seconds."""
    name = HUB_IDS.get(name_or_path, name_or_path)
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise RuntimeError(f"local model folder {name!r} has no config.json: is it a complete checkpoint "
                               "(config.json, *.safetensors, tokenizer and processor files)?")
        return name, {}
    if os.path.exists(name) or not HUB_ID.match(name):
        raise RuntimeError(f"local model path {name!r} does not exist (or is not a folder); give the folder that "
                           f"holds config.json, or a hub id such as {HUB_IDS['llava-1.5-7b']!r}")
    ok, why = hub_reachable(probe_timeout)
    if ok:
        return name, {}
    if cached_snapshot(name):
        return name, {"local_files_only": True}
    raise RuntimeError(f"cannot load {name!r}: the hub is not reachable ({why}) and the checkpoint is not in the "
                       f"local Hugging Face cache. {download_hint(name)[0].upper()}{download_hint(name)[1:]}.")


def focuslib_meta(path: str) -> dict:
    """focuslib.json of a checkpoint built by this kit (tiny, mini-real, miniature), else {}."""
    import json
    f = os.path.join(path, "focuslib.json")
    return json.loads(open(f).read()) if os.path.isfile(f) else {}


def weights_fingerprint(path: str, cfg=None) -> str | None:
    """A short id of the weights a model was loaded from, so that results written by other weights under the same
    name are not resumed (runner's meta.json). Local folder: sha256 over each weight file's name, size and content
    (whole files up to 64 MiB, else 1 MiB at the start, the end and 16 points between: retraining changes every
    tensor, and hashing 14 GB would cost a minute). Hub id: the resolved commit. None when neither is known."""
    import hashlib
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".pt", ".pth")))
        if not files:
            return None
        h = hashlib.sha256()
        for f in files:
            fp = os.path.join(path, f)
            size = os.path.getsize(fp)
            h.update(f"{f}:{size};".encode())
            with open(fp, "rb") as fh:
                if size <= 64 << 20:
                    h.update(fh.read())
                    continue
                for i in range(18):   # i = 0 and 17: the first and the last MiB
                    fh.seek(i * (size - (1 << 20)) // 17)
                    h.update(fh.read(1 << 20))
        return "sha256:" + h.hexdigest()[:16]
    commit = getattr(cfg, "_commit_hash", None)
    return f"commit:{commit}" if commit else None


def load_mllm(name_or_path: str, device: str | None = None, dtype="auto",
              attn_implementation: str = "sdpa", **adapter_kwargs) -> MLLM:
    """Load a supported MLLM by hub id (or a short alias from HUB_IDS) or local path.

    adapter_kwargs go to the family's adapter, e.g. `max_pixels=...` / `min_pixels=...` (Qwen2.5-VL),
    `vision_aspect_ratio="anyres_max_9"`, `image_grid_pinpoints=...`, `interleave=...` (LLaVA-OneVision),
    `system=...` (the chat format's system line; default: the family's, config.PROMPT_FORMATS).

    Attention stays SDPA/flash: FOCUS never needs attention weights.
    """
    import transformers
    from transformers import AutoConfig

    name, src = resolve_source(name_or_path)
    device = device or default_device()
    dt = resolve_dtype(dtype, device)
    try:
        cfg = AutoConfig.from_pretrained(name, **src)
    except (OSError, ValueError) as e:
        local = os.path.isdir(name)
        raise RuntimeError(
            f"cannot load model config for {'local path' if local else 'hub id'} {name!r}: "
            f"{e.__class__.__name__}: {str(e).splitlines()[0]}"
            + ("" if local else f"\nIf this machine has no network, {download_hint(name)}.")) from e
    try:
        fam = family_of_model_type(cfg.model_type)
    except ValueError:
        raise ValueError(f"model type {cfg.model_type!r} of {name!r} is not supported; supported: "
                         f"{sorted(f.model_type for f in FAMILIES.values())}") from None
    adapter_cls = fam.adapter
    model = getattr(transformers, fam.model_class).from_pretrained(
        name, dtype=dt, attn_implementation=attn_implementation, **src).to(device)
    processor = adapter_cls.load_processor(name, **src)
    meta = focuslib_meta(name) if os.path.isdir(name) else {}
    if "system" not in adapter_kwargs:
        if "system" in meta:
            adapter_kwargs["system"] = meta["system"]
        elif meta.get("trained"):   # the shipped miniature was trained on the plain format (decisions.md D32)
            adapter_kwargs["system"] = ""
    mllm = adapter_cls(model, processor, name=name, **adapter_kwargs)
    mllm.weights_id = weights_fingerprint(name, cfg)
    return mllm


__all__ = ["MLLM", "TokenLayout", "RelevancePass", "EXISTENCE_PROMPT", "yes_confidence",
           "load_mllm", "resolve_source", "hub_reachable", "download_hint", "LlavaAdapter", "OneVisionAdapter", "QwenVLAdapter", "FAMILIES", "HUB_IDS", "list_families", "register_family"]
