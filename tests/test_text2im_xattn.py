"""The caption-conditioned U-Net (xunet.py): cross-attention under the padding mask, FiLM, the
null caption of classifier-free guidance, and checkpoints of the old (pooled-only) format."""

from __future__ import annotations

import numpy as np
import pytest

import minigen
from minigen import checkpoint, default_dtype
from minigen.checkpoint import CheckpointError
from minigen.gradcheck import gradcheck
from minigen.synthesis import captions as C
from minigen.synthesis.caption_unet import CaptionUNet
from minigen.synthesis.clip import CLIPConfig
from minigen.synthesis.text2im_io import load_cond
from minigen.synthesis.xunet import Caption, CrossAttention, CrossAttnUNet
from minigen.tensor import Tensor, no_grad

TEXT = CLIPConfig(embed_dim=8, width=8, heads=2, layers=1, num_train_timesteps=100)
UNET = {"kind": "xattn_unet", "image_size": 16, "in_channels": 3, "base_channels": 8,
        "channel_mults": [1, 2, 2], "heads": 2, "attn_levels": [1, 2]}  # fmt: skip


def _randomise_out(module) -> None:
    """W_o starts at zero (each block the identity): give the attention blocks a say."""
    gen = np.random.default_rng(7)
    for name, p in module.named_parameters():
        if "attn" in name and name.endswith(("out.weight", "out.bias")):
            p.data[...] = 0.3 * gen.standard_normal(p.shape)


@pytest.fixture(scope="module")
def net():
    with default_dtype(np.float64):
        minigen.manual_seed(0)
        m = CaptionUNet(UNET, TEXT.to_dict())
    _randomise_out(m)
    return m.eval()


def _inputs(B, seed=0):
    gen = np.random.default_rng(seed)
    return gen.standard_normal((B, 3, 16, 16)), gen.integers(0, 100, B)


def test_padded_tokens_do_not_change_the_output(net):
    """Words after <eos> (where <pad> should be) reach neither the states the pixels see nor
    the pooled vector: causal text encoder, and the padding mask in every cross-attention."""
    tokens = C.encode_batch(["a red circle above a blue square", "a green cross"])  # (2, 20)
    noisy = tokens.copy()
    gen = np.random.default_rng(1)
    for i in range(2):
        after = np.flatnonzero(tokens[i] == C.EOS)[0] + 1
        noisy[i, after:] = gen.integers(3, len(C.VOCAB), tokens.shape[1] - after)
    x, t = _inputs(2)
    with no_grad():
        want = net(x, t, net.embed(tokens)).data
        got = net(x, t, net.embed(noisy)).data
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_masked_states_are_ignored_and_visible_ones_are_read():
    with default_dtype(np.float64):
        minigen.manual_seed(0)
        attn = CrossAttention(8, 5, heads=2)
    gen = np.random.default_rng(0)
    attn.out.weight.data[...] = gen.standard_normal((8, 8))
    h, s = Tensor(gen.standard_normal((3, 8, 4, 4))), gen.standard_normal((3, 6, 5))
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=bool)
    changed = s + 5.0 * gen.standard_normal(s.shape) * ~mask[..., None]  # masked rows only
    with no_grad():
        a = attn(h, Tensor(s), mask).data
        b = attn(h, Tensor(changed), mask).data
        c = attn(h, Tensor(s + 1.0), mask).data  # every state moves, the visible ones too
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert not np.allclose(a, c)


def test_cross_attention_ignores_the_order_of_the_tokens():
    """softmax(Q K^T) V is a weighted sum over the keys: permuting (state, mask) pairs changes
    nothing (positions live in the token states, not in the attention)."""
    with default_dtype(np.float64):
        minigen.manual_seed(1)
        attn = CrossAttention(8, 5, heads=4)
        attn.out.weight.data[...] = np.random.default_rng(2).standard_normal((8, 8))
    gen = np.random.default_rng(3)
    h, s = Tensor(gen.standard_normal((2, 8, 2, 2))), gen.standard_normal((2, 7, 5))
    mask = gen.random((2, 7)) < 0.6
    mask[:, 0] = True
    perm = gen.permutation(7)
    with no_grad():
        a = attn(h, Tensor(s), mask).data
        b = attn(h, Tensor(s[:, perm]), mask[:, perm]).data
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_new_cross_attention_block_is_the_identity():
    minigen.manual_seed(0)
    attn = CrossAttention(16, 8, heads=4)
    gen = np.random.default_rng(0)
    h = gen.standard_normal((2, 16, 4, 4)).astype(np.float32)
    s = gen.standard_normal((2, 3, 8)).astype(np.float32)
    with no_grad():
        np.testing.assert_array_equal(attn(Tensor(h), Tensor(s), np.ones((2, 3), bool)).data, h)


def test_cross_attention_gradients_match_central_differences():
    with default_dtype(np.float64):
        minigen.manual_seed(0)
        attn = CrossAttention(4, 3, heads=2)
        attn.out.weight.data[...] = np.random.default_rng(5).standard_normal((4, 4))
        gen = np.random.default_rng(0)
        h, s = gen.standard_normal((2, 4, 2, 2)), gen.standard_normal((2, 5, 3))
        mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=bool)
        gradcheck(lambda hh, ss: attn(hh, ss, mask), h, s)


def test_the_unet_reads_the_pooled_vector_and_the_tokens_with_gradients(net):
    """FiLM's path (pooled) and cross-attention's path (states) both reach eps, and their
    gradients match central differences."""
    x, t = _inputs(2, seed=2)
    with no_grad():
        e = net.embed(C.encode_batch(["a red circle left of a blue square", "a cyan cross"]))
    pooled, states = e.pooled.data, e.states.data
    unet = net.unet

    def eps(p, s):
        return unet(x, t, Caption(p, s, e.mask))[:, :, 4:8, 4:8]  # a few pixels: quicker

    gradcheck(eps, pooled, states, atol=1e-5)
    with no_grad():
        base = unet(x, t, e).data
        other_p = unet(x, t, Caption(Tensor(pooled[::-1].copy()), e.states, e.mask)).data
        other_s = unet(x, t, Caption(e.pooled, Tensor(states + 0.5), e.mask)).data
    assert not np.allclose(base, other_p) and not np.allclose(base, other_s)


def test_the_null_caption_is_the_same_with_or_without_tokens(net):
    """embed(None, n) (the null token alone) and embed(tokens, drop all) (every caption token
    masked) give one eps: the sampler and training use the same unconditional model."""
    tokens = C.encode_batch(["a red circle above a blue square", "a green cross"])
    x, t = _inputs(2, seed=4)
    with no_grad():
        a = net(x, t, net.embed(None, 2)).data
        b = net(x, t, net.embed(tokens, np.ones(2, dtype=bool))).data
        c = net(x, t, net.embed(tokens)).data
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert not np.allclose(a, c)


def test_the_unet_refuses_a_caption_that_does_not_fit(net):
    x, t = _inputs(2)
    with no_grad():
        e = net.embed(C.encode_batch(["a red circle", "a blue cross", "a green square"]))
    with pytest.raises(ValueError, match=r"a batch of 2 images needs pooled \(B, 8\)"):
        net(x, t, e)
    with pytest.raises(TypeError, match="cond must be a Caption"):
        net.unet(x, t, e.pooled)
    with pytest.raises(ValueError, match="cannot be halved"):
        CrossAttnUNet(image_size=6, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="different lengths"):
        Caption.concat([net.embed(None, 1), e])


def test_an_old_format_conditional_checkpoint_is_refused_with_a_clear_error(net, tmp_path):
    path = tmp_path / "old.safetensors"
    meta = {"format": "minigen.text2im", "version": 1, "model": net.config,
            "schedule": {"name": "linear", "num_train_timesteps": 100}}  # fmt: skip
    checkpoint.save_module(net, path, meta)
    with pytest.raises(CheckpointError, match="format version 1.*retrain"):
        load_cond(path)
    old = {**UNET, "kind": "unet"}
    with pytest.raises(ValueError, match="kind 'unet'"):
        CaptionUNet(old, TEXT.to_dict())


def test_a_half_checkpoint_is_half_the_size_and_rounds_each_weight_once(net, tmp_path):
    from minigen.synthesis.text2im_io import CondModel, save_cond

    schedule = {"name": "linear", "num_train_timesteps": 100}
    full = save_cond(CondModel(net, schedule), tmp_path / "full.safetensors")
    half = save_cond(CondModel(net, schedule), tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.3 * full.stat().st_size  # float64 weights here: a quarter
    a, b = load_cond(full).denoiser.state_dict(), load_cond(half).denoiser.state_dict()
    for k, v in a.items():
        np.testing.assert_array_equal(v, net.state_dict()[k].astype(v.dtype))
        # float16 keeps 11 significant bits: |w16 - w| <= 2^-11 |w| (normal range)
        np.testing.assert_allclose(b[k], v, rtol=2.0**-11, atol=1e-7)
    assert not all(np.array_equal(a[k], b[k]) for k in a)
