"""conv2d's BLAS formulation (windows copied channels-last, one matrix product per result)
against the convolution's definition, written as plainly as it reads in the book:

    y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] xpad[n, c, s i + u, s j + v]

and its three gradients from the same sum: dL/dw and dL/db by the chain rule on each
term, dL/dx by sending each output's gradient back to the inputs its window read.
minigen's backward takes dL/dx two ways (a correlation of the padded gradient with the
flipped kernel at stride 1 when the padding is at most k - 1; otherwise "col2im"), so the
shapes below reach both, in float32 and float64. tests/op_specs.py holds conv2d to PyTorch
and to central differences as well.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigen import Tensor, default_dtype
from minigen import functional as F
from tests import strategies as S


def reference_conv2d(x, w, b, stride, padding, g=None):
    """(y, dx, dw, db) by the definition, in float64: the windows as a view, einsum, and
    the input gradient as one add per kernel offset (y alone where g is None)."""
    x, w, b = (a.astype(np.float64) for a in (x, w, b))
    p, s = padding, stride
    kh, kw = w.shape[2:]
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xpad, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]
    Ho, Wo = win.shape[2:4]  # win: (N, C, Ho, Wo, kh, kw)
    y = np.einsum("ncijuv,ocuv->noij", win, w) + b[None, :, None, None]
    if g is None:
        return y
    g = g.astype(np.float64)
    dw = np.einsum("ncijuv,noij->ocuv", win, g)
    db = g.sum(axis=(0, 2, 3))
    dxpad = np.zeros_like(xpad)
    for u in range(kh):
        for v in range(kw):  # xpad[:, :, s i + u, s j + v] fed y[:, :, i, j] through w[:, :, u, v]
            dxpad[:, :, u : u + s * Ho : s, v : v + s * Wo : s] += np.einsum(
                "oc,noij->ncij", w[:, :, u, v], g
            )
    H, W = x.shape[2:]
    return y, dxpad[:, :, p : p + H, p : p + W], dw, db


def minigen_conv2d(x, w, b, stride, padding, g):
    with default_dtype(x.dtype):
        X, Wt, B = (Tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.conv2d(X, Wt, B, stride, padding)
        y.backward(g)
    return y.data, X.grad, Wt.grad, B.grad


def check(shapes, seed, dtype):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shapes["x"]), rng.standard_normal(shapes["w"])
    b = rng.standard_normal(shapes["w"][0])
    s, p = shapes["stride"], shapes["padding"]
    y_ref = reference_conv2d(x, w, b, s, p)
    g = rng.standard_normal(y_ref.shape)
    x, w, b, g = (a.astype(dtype) for a in (x, w, b, g))
    got = minigen_conv2d(x, w, b, s, p, g)
    want = reference_conv2d(x, w, b, s, p, g)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for name, a, r in zip(("y", "dx", "dw", "db"), got, want, strict=True):
        assert a.dtype == dtype, name
        assert a.shape == r.shape, name
        np.testing.assert_allclose(
            a, r, rtol=tol, atol=tol * np.abs(r).max(initial=1), err_msg=name
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_matches_its_definition(dtype):
    @settings(max_examples=60)
    @given(shapes=S.conv_args(max_padding=2, square=False), seed=st.integers(0, 2**16))
    def run(shapes, seed):
        check(shapes, seed, dtype)

    run()


@pytest.mark.parametrize(
    "x, w, stride, padding",
    [
        ((3, 5, 8, 8), (7, 5, 3, 3), 1, 1),  # C < O: dL/dx by the flipped kernel
        ((3, 9, 4, 4), (4, 9, 3, 3), 1, 1),  # C > O, as the U-Net's way up
        ((2, 4, 8, 8), (4, 4, 3, 3), 2, 1),  # stride 2 (the U-Net's down): col2im
        ((2, 3, 5, 4), (2, 3, 1, 1), 1, 0),  # 1x1: the windows are the input itself
        ((2, 3, 5, 4), (2, 3, 1, 3), 1, 2),  # padding > k - 1: col2im at stride 1
        ((1, 2, 7, 6), (3, 2, 3, 2), 2, 0),  # odd sizes, a rectangular kernel
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_each_path(x, w, stride, padding, dtype):
    check({"x": x, "w": w, "stride": stride, "padding": padding}, 0, dtype)


def test_conv2d_gradient_of_a_frozen_input_or_weight_is_not_computed():
    """Only what needs a gradient gets one (the U-Net's first conv reads the data)."""
    rng = np.random.default_rng(1)
    with default_dtype(np.float64):
        x = Tensor(rng.standard_normal((2, 3, 5, 5)))
        w = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
        F.conv2d(x, w, padding=1).sum().backward()
    assert x.grad is None and w.grad is not None
    want = reference_conv2d(x.data, w.data, np.zeros(4), 1, 1, np.ones((2, 4, 5, 5)))[2]
    np.testing.assert_allclose(w.grad, want, rtol=1e-10)
