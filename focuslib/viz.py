"""Pictures of a FOCUS trace: relevance map over the image, ROIs with confidences, the final input."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402


def map_to_image(rel_map: torch.Tensor, cell_boxes: torch.Tensor, size: tuple[int, int], scale: int = 4) -> np.ndarray:
    """Paint each cell's relevance over its pixel box; `[H/scale, W/scale]` float array in [0, 1]."""
    W, H = size
    out = np.zeros((max(1, H // scale), max(1, W // scale)), np.float32)
    m = rel_map.float()
    m = (m / m.max()).numpy() if float(m.max()) > 0 else m.numpy()
    b = (cell_boxes.numpy() / scale)
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            x0, y0, x1, y1 = b[r, c]
            if x1 > x0 and y1 > y0:
                out[int(y0):max(int(y0) + 1, int(np.ceil(y1))), int(x0):max(int(x0) + 1, int(np.ceil(x1)))] = m[r, c]
    return out


def plot_trace(trace, image: Image.Image, path: str | Path | None = None, max_rois: int = 8, title: str = ""):
    """One row per target: image + map overlay + ROIs (confidence labels, best in red); last panel:
    the final model input with the answer. Saves to `path` (PNG/PDF) if given; returns the figure."""
    n = max(1, len(trace.per_target))
    fig, axes = plt.subplots(n, 3, figsize=(13, 4.2 * n), squeeze=False)
    for row, t in enumerate(trace.per_target or [None]):
        ax0, ax1, ax2 = axes[row]
        ax0.imshow(image)
        ax0.set_title("input" if t is None else f"target: {t.target!r}")
        if t is not None:
            heat = map_to_image(t.map, t.layout.cell_boxes, image.size)
            ax1.imshow(image)
            ax1.imshow(heat, cmap="jet", alpha=0.5, extent=(0, image.width, image.height, 0))
            ax1.set_title(f"object relevance map {tuple(t.map.shape)}")
            shown = [i for i in range(len(t.rois)) if i < max_rois or i == t.best]
            for i in shown:
                r = t.rois[i]
                best = i == t.best
                x0, y0, x1, y1 = r.box
                ax1.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.5 if best else 1,
                                        ec="red" if best else "white"))
                label = f"#{i}" + (f" c={r.confidence:+.2f}" if r.confidence is not None else "")
                ax1.text(x0, y0, label, color="red" if best else "white", fontsize=7, va="bottom")
        for ax in (ax0, ax1):
            ax.set_axis_off()
        if row == 0 and trace.final_images:
            ax2.imshow(trace.final_images[0])
            ax2.set_title(f"final input ({trace.final_mode}) -> {trace.answer[:40]!r}", fontsize=9)
        ax2.set_axis_off()
    fig.suptitle(title or f"{trace.question.splitlines()[0][:90]}\nsearch FPs: {trace.search_fp}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
