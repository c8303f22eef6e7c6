"""Checks shared by the per-family adapter tests."""
import torch


def assert_cache_is_projection(mllm, rp, hidden_states, cached_keys=None):
    """Cached values at visual + target positions = v_proj(input_layernorm(h)); K-K keys = k_proj(...).

    hidden_states: the LLM's `output_hidden_states` of the same forward (layer inputs).
    cached_keys: optional per-layer cached (RoPE-rotated) keys `[H, N, D]`, which must differ from k_proj.
    """
    vis = rp.layout.positions.flatten()
    H, D = rp.values[0].shape[0], rp.values[0].shape[-1]
    assert len(rp.values) == mllm.num_layers == len(hidden_states) - 1
    for i, layer in enumerate(mllm.decoder_layers):
        x = layer.input_layernorm(hidden_states[i][0])                # [N, hidden]
        v = layer.self_attn.v_proj(x).view(-1, H, D).transpose(0, 1)   # [H, N, D]
        k = layer.self_attn.k_proj(x).view(-1, H, D).transpose(0, 1)
        torch.testing.assert_close(rp.values[i][:, vis], v[:, vis], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rp.values[i][:, rp.target_idx], v[:, rp.target_idx], rtol=1e-4, atol=1e-5)
        if rp.keys_norope is not None:
            torch.testing.assert_close(rp.keys_norope[i], k, rtol=1e-4, atol=1e-5)
        if cached_keys is not None:
            assert not torch.allclose(cached_keys[i][:, vis], k[:, vis], atol=1e-3)
