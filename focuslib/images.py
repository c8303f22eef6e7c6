"""Reading images safely: clear errors for bad input, documented fallbacks for odd modes.

Fallbacks (decisions.md D14): alpha is composited on white; grayscale / palette / CMYK are
converted to RGB; 16- and 32-bit integer or float images are rescaled to 8 bit by their range.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class FocusInputError(ValueError):
    """Bad user input (image, question, targets), reported before any model code runs."""


def _to_8bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return Image.fromarray(arr)
    arr = arr.astype(np.float64)
    if img.mode.startswith("I;16") or (arr.max(initial=0) > 255 and arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0):
        arr = arr / 65535.0 * 255.0 if arr.max(initial=0) > 255 else arr
    else:
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB (see module docstring for the fallbacks)."""
    if not isinstance(img, Image.Image):
        raise FocusInputError(f"expected a PIL image or a path, got {type(img).__name__}")
    if img.width < 1 or img.height < 1:
        raise FocusInputError(f"image has no pixels ({img.width}x{img.height})")
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(src: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """Open a path or encoded bytes (or take a PIL image) and return 8-bit RGB, EXIF orientation applied.

    Files and bytes (benchmark records) pass the same guard: `FOCUSLIB_MAX_IMAGE_PIXELS` raises PIL's
    decompression-bomb limit, and an image over it gets a message with its size and how to raise it.
    Raises FocusInputError naming the source for a missing, unreadable, corrupt or too large image.
    """
    if isinstance(src, Image.Image):
        return to_rgb(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        name, open_src = f"<{len(data)} bytes of image data>", lambda: io.BytesIO(data)
    else:
        path = Path(src)
        if not path.exists():
            raise FocusInputError(f"image file not found: {path}")
        if path.is_dir():
            raise FocusInputError(f"expected an image file, got a directory: {path}")
        name, open_src = str(path), lambda: path
    env = os.environ.get("FOCUSLIB_MAX_IMAGE_PIXELS")
    if env:  # the user trusts large files: PIL refuses above 2 x MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(1, int(env) // 2)
    try:
        with Image.open(open_src()) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except Image.DecompressionBombError as e:
        raise FocusInputError(_too_large(name, open_src)) from e
    except UnidentifiedImageError as e:
        raise FocusInputError(f"not a readable image file: {name}") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        raise FocusInputError(f"corrupt or truncated image file: {name} ({e})") from e


def _too_large(name: str, open_src) -> str:
    """What to say about an image over PIL's decompression-bomb guard (size, limit, how to raise it)."""
    limit = Image.MAX_IMAGE_PIXELS
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(open_src()) as im:  # header only: no pixels are decoded
            w, h = im.size
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return (f"image {name} is {w}x{h} = {w * h / 1e6:.0f} Mpx, over the decompression-bomb limit of "
            f"{2 * limit / 1e6:.0f} Mpx (2 x PIL.Image.MAX_IMAGE_PIXELS = {limit}); if you trust the file, set "
            f"FOCUSLIB_MAX_IMAGE_PIXELS={w * h} (or PIL.Image.MAX_IMAGE_PIXELS in Python), or downscale the image")


def pad_to_square(img: Image.Image, fill: tuple[int, int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Centre the image on a square canvas of its longer side (original LLaVA-1.5 'pad' mode).

    Returns the square image and the (x, y) offset of the original inside it.
    """
    w, h = img.size
    side = max(w, h)
    if w == h:
        return img, (0, 0)
    off = ((side - w) // 2, (side - h) // 2)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, off)
    return canvas, off


def crop(img: Image.Image, box) -> Image.Image:
    """Crop a half-open pixel box (x0, y0, x1, y1), clipped to the image, never empty."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, min(x0, img.width - 1)), max(0, min(y0, img.height - 1))
    x1, y1 = max(x0 + 1, min(x1, img.width)), max(y0 + 1, min(y1, img.height))
    return img.crop((x0, y0, x1, y1))
