"""Layout proof by painting: a small painted region changes exactly the visual tokens whose cell
boxes contain those pixels (the tiny model's vision features are local: layer -2 = patch embeddings).
Covers square, wide (3:1) and tall (1:3) images, i.e. the pad-to-square mapping."""
import numpy as np
import pytest
import torch
from PIL import Image

from focuslib.models import EXISTENCE_PROMPT


def _llm_input_embeds(mllm, image):
    got = {}
    lm = mllm.model.model.language_model
    h = lm.register_forward_pre_hook(lambda m, a, kw: got.__setitem__("e", kw["inputs_embeds"][0].detach()),
                                      with_kwargs=True)
    try:
        text = mllm.prompt(EXISTENCE_PROMPT.format(target="dog"), 1)
        inputs = mllm.build_inputs([[image]], [text])
        with torch.no_grad():
            mllm.model(**inputs)
    finally:
        h.remove()
    return got["e"], mllm.layout(image, inputs)


def _changed_cells(mllm, base, painted):
    e0, lay = _llm_input_embeds(mllm, base)
    e1, lay1 = _llm_input_embeds(mllm, painted)
    assert torch.equal(lay.positions, lay1.positions)
    diff = (e0 - e1).abs().amax(-1)                        # [N]
    return diff[lay.positions] > 1e-5, lay                  # [h, w]


def _paint(img, box, color=(255, 0, 255)):
    out = img.copy()
    arr = np.asarray(out).copy()
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = color
    return Image.fromarray(arr)


def _inner(box, frac=0.3):
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * frac, (y1 - y0) * frac
    return int(np.ceil(x0 + dx)), int(np.ceil(y0 + dy)), int(np.floor(x1 - dx)), int(np.floor(y1 - dy))


@pytest.mark.parametrize("size", [(700, 700), (1008, 336), (336, 1008), (1500, 500), (420, 1260)])
def test_painted_region_lands_on_its_cells(tiny_llava, size):
    W, H = size
    base = Image.new("RGB", size, (90, 120, 60))
    lay = tiny_llava.grid_layout(base)
    valid = lay.valid
    rows, cols = torch.nonzero(valid, as_tuple=True)
    r_lo, r_hi, c_lo, c_hi = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    # three single cells (corner-ish, centre, far edge) and one 2x2 block of the IMAGE area
    picks = [[(r_lo + 1, c_lo + 1)], [((r_lo + r_hi) // 2, (c_lo + c_hi) // 2)], [(r_hi - 1, c_hi - 2)],
             [(r_lo + 3, c_hi - 5), (r_lo + 3, c_hi - 4), (r_lo + 4, c_hi - 5), (r_lo + 4, c_hi - 4)]]
    for cells in picks:
        boxes = torch.stack([lay.cell_boxes[r, c] for r, c in cells])
        region = (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max()))
        painted = _paint(base, _inner(region, 0.3 / len(cells) ** 0.5))
        changed, _ = _changed_cells(tiny_llava, base, painted)
        expected = torch.zeros_like(changed)
        for r, c in cells:
            expected[r, c] = True
        assert torch.equal(changed, expected), (size, cells, torch.nonzero(changed).tolist())


def test_padding_cells_cover_no_pixels(tiny_llava):
    lay = tiny_llava.grid_layout(Image.new("RGB", (1008, 336)))
    # 3:1 -> the image occupies the middle 8 of 24 rows; the rest is mean-colour padding
    assert lay.valid.sum() == 8 * 24
    assert lay.valid[8:16].all() and not lay.valid[:8].any() and not lay.valid[16:].any()
    assert torch.allclose(lay.cell_boxes[8, 0], torch.tensor([0.0, 0.0, 42.0, 42.0]))
    assert torch.allclose(lay.cell_boxes[15, 23], torch.tensor([966.0, 294.0, 1008.0, 336.0]))
