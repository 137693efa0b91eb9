"""The GPT model: sizes counted from the config, initialisation, causality, the KV cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen
from minigen import no_grad
from minigen.text.gpt import GPT, PRESETS, GPTConfig, flops_per_token, param_shapes, preset
from minigen.text.gpt_ops import row_sum_by_id
from minigen.text.sampling import generate_ids

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny_model(seed: int = 0, **changes) -> GPT:
    minigen.manual_seed(seed)
    return GPT(TINY.replace(**changes))


def random_model(seed: int = 0) -> GPT:
    """Weights N(0, 0.5): far from the near-uniform start, so greedy decoding varies."""
    model = tiny_model(seed)
    for p in model.parameters():
        p.data[...] = 0.5 * minigen.rng.randn(*p.shape)
    return model


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("bias", [True, False])
def test_param_shapes_are_the_models(bias):
    model = tiny_model(bias=bias)
    assert {n: p.shape for n, p in model.named_parameters()} == param_shapes(model.config)
    assert model.num_params() == sum(p.size for p in model.parameters())


def test_gpt2_has_124_439_808_parameters():
    assert PRESETS["gpt2"].num_params() == 124_439_808


def test_gpt3_175b_is_counted_without_allocating():
    c = preset("gpt3-175b")
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size) == (96, 96, 12288, 2048)
    assert param_shapes(c)["h.0.mlp.c_fc.weight"] == (12288, 4 * 12288)  # MLP hidden 49,152
    assert c.num_params() == pytest.approx(174.6e9, rel=0.005)


@pytest.mark.parametrize("name", list(PRESETS))
def test_non_embedding_count_leaves_out_the_two_tables(name):
    c = PRESETS[name]
    tables = (c.vocab_size + c.block_size) * c.n_embd
    assert c.num_params() - c.num_params(non_embedding=True) == tables


@pytest.mark.parametrize("name", list(PRESETS))
def test_flops_per_token_is_two_per_matmul_weight_plus_attention(name):
    c = PRESETS[name]
    shapes = param_shapes(c)
    matmul_weights = sum(
        math.prod(s) for k, s in shapes.items() if k.endswith("weight") and len(s) == 2
    ) - math.prod(shapes["wpe.weight"])  # the position table is added, not multiplied
    forward = flops_per_token(c, training=False)
    attention = 4 * c.n_layer * c.block_size * c.n_embd  # q k^T and att v over the context
    assert forward == 2 * matmul_weights + attention
    assert flops_per_token(c) == 3 * forward
    assert flops_per_token(c, context=1, training=False) < forward


def test_bad_configs_and_presets_are_named():
    with pytest.raises(ValueError, match="n_embd=10 does not split into n_head=3"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="unknown GPT preset 'gpt5'"):
        preset("gpt5")
    with pytest.raises(ValueError, match="unknown GPTConfig keys"):
        GPTConfig.from_dict({"n_layers": 3})


# ----------------------------------------------------------------------------- initialisation


def test_gpt2_initialisation():
    minigen.manual_seed(0)
    c = GPTConfig(vocab_size=300, block_size=64, n_layer=3, n_head=4, n_embd=64)
    params = dict(GPT(c).named_parameters())
    proj = np.concatenate([params[f"h.{i}.mlp.c_proj.weight"].data.ravel() for i in range(3)])
    assert proj.std() == pytest.approx(0.02 / math.sqrt(2 * c.n_layer), rel=0.05)
    for name in ("wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_fc.weight"):
        assert params[name].data.std() == pytest.approx(0.02, rel=0.05), name
    for name, p in params.items():
        if name.endswith("bias"):
            assert not p.data.any(), name
        elif "ln" in name:
            assert (p.data == 1).all(), name


def test_one_seed_gives_one_model():
    a, b, c = tiny_model(3), tiny_model(3), tiny_model(4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["wte.weight"], sc["wte.weight"])


def test_the_head_is_tied_to_the_token_embedding():
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    assert not any("head" in n for n in names)
    ids = np.array([[1, 2, 3]])
    with no_grad():
        x = model.ln_f(model.h[1](model.h[0](model.wte(ids) + model.wpe(np.arange(3)))))
        np.testing.assert_allclose(model(ids).data, x.data @ model.wte.weight.data.T, rtol=1e-5)


# ----------------------------------------------------------------------------- the forward pass


@given(data=st.data())
def test_causal_a_token_changes_no_earlier_logit(data):
    model = tiny_model()
    T = data.draw(st.integers(2, TINY.block_size))
    ids = np.array(data.draw(st.lists(st.integers(0, 10), min_size=T, max_size=T)))[None]
    t = data.draw(st.integers(0, T - 1))
    other = ids.copy()
    other[0, t] = (ids[0, t] + 1) % TINY.vocab_size
    with no_grad():
        a, b = model(ids).data, model(other).data
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert not np.allclose(a[:, t:], b[:, t:])


def test_context_longer_than_block_size_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceed block_size=8; crop the context"):
        model(np.zeros((1, 9), dtype=int))
    with pytest.raises(ValueError, match="ids must have shape"):
        model(np.zeros(3, dtype=int))


def test_dropout_is_random_in_training_and_off_in_eval():
    model = tiny_model(dropout=0.5)
    ids = np.arange(8)[None] % 11
    with no_grad():
        a, b = model(ids).data, model(ids).data
        model.eval()
        c, d = model(ids).data, model(ids).data
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(c, d)


@given(ids=st.lists(st.integers(0, 6), min_size=0, max_size=40), D=st.integers(1, 4))
def test_row_sum_by_id_is_a_scatter_add(ids, D):
    ids = np.array(ids, dtype=np.int64)
    g = np.random.default_rng(len(ids)).standard_normal((len(ids), D))
    want = np.zeros((7, D))
    np.add.at(want, ids, g)
    np.testing.assert_allclose(row_sum_by_id(ids, g, 7), want, atol=1e-12)


# ----------------------------------------------------------------------------- the KV cache


def test_cached_logits_equal_the_full_forward():
    model = random_model().eval()
    ids = np.random.default_rng(0).integers(0, 11, (2, 8))
    with no_grad():
        full = model(ids).data
        cache = model.new_cache(2)
        parts = [model(ids[:, :3], cache=cache).data]
        parts += [model(ids[:, t : t + 1], cache=cache).data for t in range(3, 8)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-5, atol=1e-6)
    assert cache.length == 8


@pytest.mark.parametrize("prompt_len", [1, 5])
def test_greedy_decoding_is_the_same_with_and_without_the_cache(prompt_len):
    """Also past block_size, where the window slides and the cache is rebuilt."""
    model = random_model(seed=prompt_len)
    prompt = np.arange(prompt_len) % 11
    n = 3 * TINY.block_size
    with_cache = np.concatenate(list(generate_ids(model, prompt, n, temperature=0)))
    without = np.concatenate(list(generate_ids(model, prompt, n, temperature=0, use_cache=False)))
    np.testing.assert_array_equal(with_cache, without)
    assert len(set(with_cache.tolist())) > 1  # not a degenerate run of one token


def test_the_cache_is_for_inference_only():
    model = tiny_model()
    with pytest.raises(ValueError, match="KV cache is for inference"):
        model(np.zeros((1, 2), dtype=int), cache=model.new_cache())


def test_attention_maps_are_causal_distributions():
    model = random_model()
    maps = model.attention_maps(np.arange(6)[None] % 11)
    assert len(maps) == TINY.n_layer
    for att in maps:
        assert att.shape == (1, TINY.n_head, 6, 6)
        np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)
        assert not np.triu(att[0, 0], k=1).any()  # nothing from the future
