"""The embedded default model and the model aliases every command accepts.

`--model tiny` is the miniature LLaVA-1.5 shipped in data/models/miniature-llava-1.5 when it is there (trained on
this CPU on the synthetic world: reads colours off crops, but FOCUS does not help it, see its card), else the random-weight tiny LLaVA-1.5 built
offline; `random-tiny` is always the latter; models.HUB_IDS names the paper's checkpoints."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from focuslib.images import FocusInputError
from focuslib.models import HUB_IDS
from focuslib.offline.tiny import build_tiny_llava, TINY_LLAVA_NOTE


REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path(os.environ.get("FOCUSLIB_CACHE", REPO / ".cache"))


SHIPPED_MINIATURE = REPO / "data" / "models" / "miniature-llava-1.5"


def embedded_default() -> tuple[str, str | None]:
    """Path of the embedded default model and a warning to print with it (None if none is due).

    A miniature LLaVA-1.5 trained by `make miniature` becomes the default once it is shipped in
    data/models/miniature-llava-1.5 (issue 16: attempt 3, run 17 is shipped; what it can do is in its card);
    without it the random-weight tiny LLaVA-1.5 is built offline, and the warning says its answers are noise."""
    if (SHIPPED_MINIATURE / "config.json").exists():
        return str(SHIPPED_MINIATURE), None
    return random_tiny(), TINY_LLAVA_NOTE


def random_tiny() -> str:
    """The random-weight tiny LLaVA-1.5 (built offline on first use): mechanics only."""
    path = DEFAULT_CACHE / "tiny-llava-1.5"
    if not (path / "config.json").exists():
        print(f"building the tiny random-weight LLaVA-1.5 at {path} (offline, ~2 s) ...", file=sys.stderr)
        build_tiny_llava(path)
    return str(path)


MODEL_ALIASES = {"tiny": "the embedded default (the shipped miniature, else the random tiny LLaVA-1.5)",
                 "random-tiny": "the random-weight tiny LLaVA-1.5 (built offline)"}

def aliases_help() -> str:
    return ", ".join([*MODEL_ALIASES, *HUB_IDS])


def resolve_model(arg: str) -> str:
    """A model argument (alias, hub id or local directory) -> what load_mllm gets; checks local paths.

    Aliases: 'tiny', 'random-tiny' and models.HUB_IDS, accepted by every command."""
    if arg == "tiny":
        return embedded_default()[0]
    if arg == "random-tiny":
        return random_tiny()
    if arg in HUB_IDS:
        return HUB_IDS[arg]
    p = Path(arg).expanduser()
    looks_local = p.exists() or arg.startswith((".", "/", "~")) or os.sep + os.sep in arg or arg.count("/") != 1
    if not looks_local:
        return arg  # a hub id "org/name"
    if not p.exists():
        raise FocusInputError(f"model {arg!r} is neither a local directory nor a hub id (org/name) nor an alias "
                   f"({aliases_help()})")
    if not p.is_dir():
        raise FocusInputError(f"model {arg!r} is a file; give the checkpoint's directory (with config.json and weights)")
    if not (p / "config.json").exists():
        what = "is empty" if not any(p.iterdir()) else "has no config.json"
        raise FocusInputError(f"model directory {arg} {what}: not a Hugging Face checkpoint (download one with "
                   "`hf download ID --local-dir DIR`, or use --model tiny)")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise FocusInputError(f"model directory {arg} has a config.json but no weights (*.safetensors / *.bin): an "
                   "interrupted download? Download it again")
    return str(p)
