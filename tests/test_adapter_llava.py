"""The LLaVA-1.5 adapter reads the right tensors at the right places."""
import numpy as np
import pytest
import torch
from PIL import Image

from focuslib.models import EXISTENCE_PROMPT

from _checks import assert_cache_is_projection


def _forward_hidden(mllm, image, target):
    text = mllm.prompt(EXISTENCE_PROMPT.format(target=target), 1)
    inputs = {k: v for k, v in mllm.build_inputs([[image]], [text]).items()}
    with torch.no_grad():
        out = mllm.model(**inputs, output_hidden_states=True, use_cache=True)
    return inputs, out


def _image(w=500, h=300, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_cached_values_are_v_proj_of_normed_hidden_states(tiny_llava):
    img = _image()
    rp = tiny_llava.relevance_pass(img, "red car", keys=True)
    _, out = _forward_hidden(tiny_llava, img, "red car")
    keys = [layer.keys[0] for layer in out.past_key_values.layers]
    assert_cache_is_projection(tiny_llava, rp, out.hidden_states, cached_keys=keys)


@pytest.mark.parametrize("target", ["red car", "dog", "tissue box", "person in the red jacket"])
def test_target_positions_decode_to_the_target(tiny_llava, target):
    rp = tiny_llava.relevance_pass(_image(), target)
    text = tiny_llava.tokenizer.convert_tokens_to_string(rp.target_tokens).strip()
    assert text == target
    # target tokens come after every visual token and are contiguous
    assert int(rp.target_idx.min()) > int(rp.layout.positions.max())
    assert torch.equal(rp.target_idx, torch.arange(int(rp.target_idx[0]), int(rp.target_idx[0]) + len(rp.target_idx)))


def test_layout_is_576_row_major_positions(tiny_llava):
    rp = tiny_llava.relevance_pass(_image(336, 336), "dog")
    pos = rp.layout.positions
    assert pos.shape == (24, 24)
    assert torch.equal(pos.flatten(), torch.arange(int(pos[0, 0]), int(pos[0, 0]) + 576))


def test_yes_no_ids_are_distinct_single_tokens(tiny_llava):
    y, n = tiny_llava.answer_token_id("Yes"), tiny_llava.answer_token_id("No")
    assert y != n
    assert tiny_llava.tokenizer.decode([y]).strip() == "Yes"
