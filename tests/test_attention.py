"""Attention you can read: the plain `F.attention`, softmax(q k^T * scale + M) v in three ops,
is the reference that the fused path (`scaled_dot_product_attention`: `attention_forward` and
the hand-derived `attention_backward`) and the GPT's `causal_self_attention` are held to, in
float64: values and the gradients of q, k and v; and PyTorch's attention, when installed."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen.functional as F
from minigen import Tensor, no_grad
from minigen.text import gpt, gpt_ops
from tests import strategies as S


def draw_problem(data: st.DataObject) -> tuple[list[np.ndarray], dict, np.ndarray]:
    """q, k, v, the problem (kind, mask, scale) and an upstream gradient dO of the output."""
    p = data.draw(S.attention_problems())
    sq, sk, sv = p["shapes"]
    arrays = [data.draw(S.arrays(s)) for s in (sq, sk, sv)]
    dout = data.draw(S.arrays((*sq[:-1], sv[-1])))
    return arrays, p, dout


def plain_mask(p: dict, T: int, S_: int) -> np.ndarray | None:
    return F.causal_mask(T, S_) if p["kind"] == "causal" else p["mask"]


def run(f, arrays: list[np.ndarray], dout: np.ndarray) -> tuple[np.ndarray, ...]:
    """f's output and the gradients of its three inputs, for the loss sum(O * dO)."""
    xs = [Tensor(a, dtype=np.float64, requires_grad=True) for a in arrays]
    y = f(*xs)
    (y * dout).sum().backward()
    return (y.data, *(x.grad for x in xs))


def plain(p: dict):
    def f(q, k, v):
        return F.attention(q, k, v, plain_mask(p, q.shape[-2], k.shape[-2]), p["scale"])

    return f


def fused(p: dict):
    def f(q, k, v):
        if p["kind"] == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=p["scale"])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=p["mask"], scale=p["scale"])

    return f


NAMES = ("O", "dQ", "dK", "dV")


@given(data=st.data())
def test_the_fused_attention_equals_the_plain_one(data):
    arrays, p, dout = draw_problem(data)
    want = run(plain(p), arrays, dout)
    for name, got, ref in zip(NAMES, run(fused(p), arrays, dout), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12, err_msg=f"{name} {p['kind']}")


@given(data=st.data())
def test_attention_forward_returns_the_weights_of_the_plain_softmax(data):
    """P = softmax(Q K^T s + M), row by row: what the backward and the attention maps read."""
    (q, k, v), p, _ = draw_problem(data)
    scale = 1 / np.sqrt(q.shape[-1]) if p["scale"] is None else p["scale"]
    mask = plain_mask(p, q.shape[-2], k.shape[-2])
    s = q @ k.swapaxes(-1, -2) * scale  # (B, H, T, S)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    P = np.exp(s - s.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    is_causal = p["kind"] == "causal"
    y, att = F.attention_forward(q, k, v, scale, is_causal, None if is_causal else mask)
    np.testing.assert_allclose(att, P, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(y, P @ v, rtol=1e-9, atol=1e-12)


@pytest.mark.oracle
@given(data=st.data())
def test_plain_and_fused_attention_match_pytorch(data):
    torch = pytest.importorskip("torch")
    arrays, p, dout = draw_problem(data)
    tq, tk, tv = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays)
    T, S_ = arrays[0].shape[-2], arrays[1].shape[-2]
    mask = plain_mask(p, T, S_)
    tmask = None if mask is None else torch.tensor(np.broadcast_to(mask, (T, S_)).copy())
    ty = torch.nn.functional.scaled_dot_product_attention(
        tq, tk, tv, attn_mask=tmask, scale=p["scale"]
    )  # (its masks must be 2-D)
    (ty * torch.tensor(dout)).sum().backward()
    theirs = [t.detach().numpy() for t in (ty, tq.grad, tk.grad, tv.grad)]
    for f in (plain(p), fused(p)):
        for name, got, ref in zip(NAMES, run(f, arrays, dout), theirs, strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------- the GPT's attention


def plain_gpt_attention(qkv: Tensor, n_head: int) -> Tensor:
    """Multi-head causal self-attention spelled out: split the heads, F.attention, merge."""
    B, T, C3 = qkv.shape
    heads = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)
    y = F.attention(heads[0], heads[1], heads[2], F.causal_mask(T, T))  # (B, nh, T, hs)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)  # (B, T, d)


@given(args=S.gpt_attention_args(), data=st.data())
def test_the_gpts_attention_is_the_plain_attention_per_head(args, data):
    shape, n_head = args
    qkv = data.draw(S.arrays(shape))
    dout = data.draw(S.arrays((*shape[:-1], shape[-1] // 3)))
    want = run(lambda t: plain_gpt_attention(t, n_head), [qkv], dout)
    got = run(lambda t: gpt_ops.causal_self_attention(t, n_head), [qkv], dout)
    for name, g, w in zip(("O", "dqkv"), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=name)


@given(args=S.gpt_attention_args(), data=st.data())
def test_the_gpts_cached_attention_is_the_plain_attention_of_the_whole_sequence(args, data):
    """With a KV cache, each chunk of new queries attends to every key so far."""
    (B, T, C3), n_head = args
    qkv = data.draw(S.arrays((B, T, C3)))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, T - 1), max_size=2)))) if T > 1 else []
    cache = gpt_ops.KVCache(1, B, n_head, T, C3 // (3 * n_head), np.float64)
    with no_grad():
        want = plain_gpt_attention(Tensor(qkv, dtype=np.float64), n_head).data
        parts = []
        for lo, hi in zip([0, *cuts], [*cuts, T], strict=True):  # chunks of new positions
            chunk = Tensor(qkv[:, lo:hi], dtype=np.float64)  # (B, hi - lo, 3d)
            parts.append(gpt_ops.causal_self_attention(chunk, n_head, cache=(cache, 0)).data)
            cache.advance(hi - lo)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), want, rtol=1e-9, atol=1e-12)


def test_the_docstrings_of_the_fast_attention_point_to_the_plain_one():
    plain_name = re.compile(r"`(minigen\.functional\.|F\.)?attention`")
    for f in (
        gpt.CausalSelfAttention,
        gpt_ops.causal_self_attention,
        F.scaled_dot_product_attention,
        F.attention_forward,
        F.attention_backward,
    ):
        assert plain_name.search(inspect.getdoc(f)), f"{f.__qualname__}: no pointer to F.attention"
    # the derivation, in the names of the issue and of llm.c
    steps = ("dV = P^T dO", "dP = dO V^T", "dS = P * (dP - rowsum(dP * P))", "dQ = dS K s")
    for step in (*steps, "dK = dS^T Q s"):
        assert step in F.attention_backward.__doc__
        assert f"# {step}" in inspect.getsource(F.attention_backward)
