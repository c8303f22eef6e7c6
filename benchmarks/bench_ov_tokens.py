"""Image tokens of LLaVA-OneVision's final multi-image input on HR-Bench-8K-sized inputs, both interleave modes.

    .venv/bin/python benchmarks/bench_ov_tokens.py            # writes benchmarks/results_ov_tokens.md

The paper ran transformers 4.46, where every image of a multi-image OV prompt was anyres-tiled
(focuslib's default `interleave="anyres"`); transformers >= PR 38084 encodes each image of a multi-image
prompt as one 384 view (`interleave="native"`). The counts come from the real processor settings
(tiny OV model built offline: 729 tokens per view, the 36 pinpoints, anyres_max_9) by running
`build_inputs` on blank images of each size, and are cross-checked against the adapter's formula
(`num_image_tokens` / `final_input_tokens`). Crop sizes follow the OV HR-Bench preset on a 7431x5358 image:
ROIs of s_min = 3 and s_max = 5 pooled map cells; type-2 merges two s_max ROIs side by side.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HR8K = (7431, 5358)   # paper Tab. 8, average HR-Bench-8K image (W, H)


def adapters(path: Path):
    """(anyres adapter, native adapter) sharing one tiny OV model + processor."""
    from focuslib.models import OneVisionAdapter, load_mllm
    m = load_mllm(str(path), device="cpu", dtype="float32")
    return (OneVisionAdapter(m.model, m.processor, interleave="anyres"),
            OneVisionAdapter(m.model, m.processor, interleave="native"))


def crop_sizes(ov, image_size=HR8K) -> dict[str, tuple[int, int]]:
    """Typical final crops on an image of `image_size`: s_min / s_max ROIs of the pooled map, and a merged pair."""
    from focuslib.core.config import preset
    cfg = preset("llava-onevision", "hrbench", n_steps=8)
    lay = ov.grid_layout(Image.new("RGB", image_size)).pooled(cfg.downsample)
    h, w = lay.shape
    cw = image_size[0] / w        # pooled cell, original px
    ch = image_size[1] / h
    side = lambda s: (round(s * cw), round(s * ch))   # noqa: E731
    return {f"ROI s_min={cfg.s_min}": side(cfg.s_min), f"ROI s_max={cfg.s_max}": side(cfg.s_max),
            "merged 2 x s_max": (2 * side(cfg.s_max)[0], side(cfg.s_max)[1])}


def count(ov, sizes) -> int:
    """Image tokens the processor puts in ONE prompt with blank images of `sizes`."""
    images = [Image.new("RGB", s) for s in sizes]
    inputs = ov.build_inputs([images], [ov.prompt("What?", len(images))])
    n = int((inputs["input_ids"] == ov.image_token_id).sum())
    assert n == ov.final_input_tokens(list(sizes)), (sizes, n, ov.final_input_tokens(list(sizes)))
    return n


def measure(path: Path) -> list[dict]:
    """One row per input: name, image sizes, tokens with anyres (paper) and native interleave."""
    anyres, native = adapters(path)
    crops = crop_sizes(anyres)
    s_max = next(v for k, v in crops.items() if k.startswith("ROI s_max"))
    rows = [dict(name=f"global view alone {HR8K[0]}x{HR8K[1]}", sizes=[HR8K])]
    rows += [dict(name=f"{k} crop alone", sizes=[v]) for k, v in crops.items()]
    rows += [dict(name="type-1, one target: global + s_max crop", sizes=[HR8K, s_max]),
             dict(name="type-1, two targets: global + 2 s_max crops", sizes=[HR8K, s_max, s_max]),
             dict(name="type-2: global + merged pair + s_max crop",
                  sizes=[HR8K, crops["merged 2 x s_max"], s_max])]
    for r in rows:
        r["anyres"], r["native"] = count(anyres, r["sizes"]), count(native, r["sizes"])
        # ZoomEye's OV final input (zoom_model.py ZoomModelGlobalLocal): a 384 global view + the anyres crop(s)
        r["zoomeye"] = (native.num_image_tokens(HR8K, multi=True)
                        + sum(anyres.num_image_tokens(s) for s in r["sizes"][1:])) if len(r["sizes"]) > 1 else None
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = ("| input | image sizes (W x H) | tokens, anyres (default; paper, transformers 4.46) | "
            "tokens, native (OV multi-image, transformers >= PR 38084) | ZoomEye-style (384 global + anyres crops) |")
    lines = [head, "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        sizes = ", ".join(f"{w}x{h}" for w, h in r["sizes"])
        lines.append(f"| {r['name']} | {sizes} | {r['anyres']} | {r['native']} | {r['zoomeye'] or '-'} |")
    return "\n".join(lines)


def main() -> None:
    from focuslib.offline.tiny import build_tiny_onevision
    with tempfile.TemporaryDirectory() as d:
        rows = measure(build_tiny_onevision(Path(d) / "ov"))
    md = ("# LLaVA-OneVision final-input image tokens on HR-Bench-8K-sized inputs\n\n"
          "`benchmarks/bench_ov_tokens.py` (processor counts, checked against the adapter's formula; real OV-7B "
          "processor settings on the tiny model). A single image (first four rows) is tiled the same way in both "
          "modes; they differ once a prompt holds several images.\n\n" + to_markdown(rows) + "\n")
    out = ROOT / "benchmarks" / "results_ov_tokens.md"
    out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
