"""The LLaVA-1.5 adapter reads the right tensors at the right places."""
import numpy as np
import pytest
import torch
from PIL import Image

from focuslib.models import EXISTENCE_PROMPT


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
    vis = rp.layout.positions.flatten()
    H, D = rp.values[0].shape[0], rp.values[0].shape[-1]
    assert len(rp.values) == tiny_llava.num_layers == len(out.hidden_states) - 1
    for i, layer in enumerate(tiny_llava.decoder_layers):
        x = layer.input_layernorm(out.hidden_states[i][0])           # [N, hidden]
        v = layer.self_attn.v_proj(x).view(-1, H, D).transpose(0, 1)  # [H, N, D]
        k = layer.self_attn.k_proj(x).view(-1, H, D).transpose(0, 1)
        torch.testing.assert_close(rp.values[i][:, vis], v[:, vis], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rp.values[i][:, rp.target_idx], v[:, rp.target_idx], rtol=1e-4, atol=1e-5)
        # the K-K path gets keys WITHOUT RoPE: k_proj outputs, not the cache's rotated keys
        torch.testing.assert_close(rp.keys_norope[i], k, rtol=1e-4, atol=1e-5)
        cached_k = out.past_key_values.layers[i].keys[0]
        assert not torch.allclose(cached_k[:, vis], k[:, vis], atol=1e-3)


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
