"""Every kernel backend computes what the NumPy reference computes, forward and backward.

One suite, parametrised over the backends of `minigen_kernels` that can run here:
numba-cpu always; numba-cuda on an NVIDIA GPU, or else in numba's CUDA simulator
(conftest.py switches it on: slow, so tiny shapes and few examples); cupy where
cupy and a GPU exist (skipped otherwise, naming what is missing). Inputs are drawn
around tile and block sizes (1, 15, 16, 17, 31, 32, 33, ...), with single rows and
columns, magnitudes up to 1e4 and -inf entries (as after masking), in float32 and
float64. The references themselves are checked in test_kernels_reference.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import minigen_kernels as mk
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import strategies as S

ref = mk.get("numpy")
DTYPES = [np.float32, np.float64]
# (rtol, atol) of a kernel against the reference, by dtype: the kernels sum in another
# order (SIMD lanes, tree reductions) and float32 uses a polynomial exp.
TOL = {np.dtype(np.float32): (2e-5, 2e-6), np.dtype(np.float64): (1e-10, 1e-12)}


@dataclass(frozen=True)
class Budget:
    """How much each backend is asked: the simulator runs a Python thread per GPU thread."""

    examples: int
    max_lead: int  # leading (batch) axes
    max_side: int  # size of each leading axis
    max_cols: int  # row length N
    max_t: int  # queries T of attention scores
    max_matmul: int  # sides n, k, m


FULL = Budget(examples=20, max_lead=2, max_side=5, max_cols=150, max_t=40, max_matmul=140)
SIMULATED = Budget(examples=2, max_lead=1, max_side=2, max_cols=9, max_t=4, max_matmul=17)


def _param(name: str):
    reason = mk.why_unavailable(name)
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


BACKENDS = [_param(name) for name in mk.BACKENDS if name != "numpy"]


def backend_setup(backend: str):
    """(the backend's module, its budget, a hypothesis settings decorator)."""
    simulated = backend == "numba-cuda" and mk.is_cuda_simulator()
    budget = SIMULATED if simulated else FULL
    return mk.get(backend), budget, settings(max_examples=budget.examples)


def assert_close(got, want, scale: float = 1.0) -> None:
    got = mk.to_numpy(got)
    assert got.dtype == want.dtype, f"dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape, f"shape {got.shape}, reference {want.shape}"
    rtol, atol = TOL[want.dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


def rows(b: Budget, dtype, masked: bool = False):
    shapes = S.row_shapes(b.max_lead, b.max_side, b.max_cols)
    if masked:
        return shapes.flatmap(lambda s: S.masked_rows(s, dtype))
    return shapes.flatmap(lambda s: S.kernel_arrays(s, dtype))


def pair(shape_strategy, dtype, scales=(1.0,)):
    """Two arrays of one drawn shape (an input and the gradient of the output)."""
    return shape_strategy.flatmap(
        lambda s: st.tuples(S.kernel_arrays(s, dtype, scales), S.kernel_arrays(s, dtype))
    )


def matmul_bound(a, b, dtype):
    """|error| of a float sum of k products: at most about k eps (|A| |B|)_ij."""
    k = a.shape[1]
    return 4 * k * np.finfo(dtype).eps * (np.abs(a) @ np.abs(b)).astype(np.float64) + 1e-30


pytestmark = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])


# ----------------------------------------------------------------------------- matmul


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["naive", "tiled"])
def test_matmul_is_the_exact_product_within_rounding(backend, kind, dtype):
    k, b, budget = backend_setup(backend)
    matmul = getattr(k, f"matmul_{kind}")

    @budget
    @given(shapes=S.matmul_2d_shapes(b.max_matmul), seed=st.integers(0, 2**32 - 1))
    def check(shapes, seed):
        rng = np.random.default_rng(seed)
        a, bb = (rng.standard_normal(s).astype(dtype) for s in shapes)
        c = mk.to_numpy(matmul(a, bb))
        assert c.dtype == dtype and c.shape == (shapes[0][0], shapes[1][1])
        exact = a.astype(np.float64) @ bb.astype(np.float64)
        assert np.all(np.abs(c - exact) <= matmul_bound(a, bb, dtype))

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_backward(backend, dtype):
    k, b, budget = backend_setup(backend)

    @budget
    @given(shapes=S.matmul_2d_shapes(b.max_matmul), seed=st.integers(0, 2**32 - 1))
    def check(shapes, seed):
        rng = np.random.default_rng(seed)
        a, bb = (rng.standard_normal(s).astype(dtype) for s in shapes)
        dc = rng.standard_normal((shapes[0][0], shapes[1][1])).astype(dtype)
        da, db = (mk.to_numpy(g) for g in k.matmul_backward(a, bb, dc))
        f64 = [v.astype(np.float64) for v in (a, bb, dc)]
        # dA = dC B^T, dB = A^T dC
        assert np.all(np.abs(da - f64[2] @ f64[1].T) <= matmul_bound(dc, bb.T, dtype))
        assert np.all(np.abs(db - f64[0].T @ f64[2]) <= matmul_bound(a.T, dc, dtype))

    check()


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["softmax_forward", "log_softmax_forward"])
def test_softmax_forward(backend, op, dtype):
    k, b, budget = backend_setup(backend)

    @budget
    @given(x=rows(b, dtype, masked=True))
    def check(x):
        assert_close(getattr(k, op)(x), getattr(ref, op)(x))

    check()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_backward(backend, op, dtype):
    k, b, budget = backend_setup(backend)
    shapes = S.row_shapes(b.max_lead, b.max_side, b.max_cols)

    @budget
    @given(
        xs=shapes.flatmap(lambda s: st.tuples(S.masked_rows(s, dtype), S.kernel_arrays(s, dtype)))
    )
    def check(xs):
        x, dy = xs
        y = getattr(ref, f"{op}_forward")(x)  # probabilities, or log-probabilities (-inf too)
        assert_close(getattr(k, f"{op}_backward")(y, dy), getattr(ref, f"{op}_backward")(y, dy))

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_softmax_forward_and_masked_keys_exactly_zero(backend, dtype):
    k, b, budget = backend_setup(backend)
    shapes = S.causal_shapes(b.max_lead, b.max_side, b.max_t)

    @budget
    @given(s=shapes.flatmap(lambda s: S.kernel_arrays(s, dtype, (1.0, 30.0))),
           scale=st.sampled_from([1.0, 0.125, 1 / math.sqrt(3.0)]))  # fmt: skip
    def check(s, scale):
        y = k.causal_softmax_forward(s, scale)
        assert_close(y, ref.causal_softmax_forward(s, scale))
        t, n = s.shape[-2:]
        assert np.all(mk.to_numpy(y)[..., ~ref.causal_mask(t, n)] == 0)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_softmax_backward(backend, dtype):
    k, b, budget = backend_setup(backend)

    @budget
    @given(xs=pair(S.causal_shapes(b.max_lead, b.max_side, b.max_t), dtype, (1.0, 30.0)),
           scale=st.sampled_from([1.0, 0.125]))  # fmt: skip
    def check(xs, scale):
        s, dy = xs
        y = ref.causal_softmax_forward(s, scale)
        assert_close(
            k.causal_softmax_backward(y, dy, scale), ref.causal_softmax_backward(y, dy, scale)
        )

    check()


# ----------------------------------------------------------------------------- DDPM


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddpm_step(backend, dtype):
    k, b, budget = backend_setup(backend)
    shapes = S.row_shapes(b.max_lead + 1, b.max_side, b.max_cols)

    @budget
    @given(
        xs=shapes.flatmap(lambda s: st.tuples(*(S.kernel_arrays(s, dtype) for _ in range(3)))),
        beta=st.floats(1e-4, 0.05),
        abar=st.floats(1e-3, 0.999),
        noise=st.booleans(),
    )
    def check(xs, beta, abar, noise):
        x, eps, z = xs
        z = z if noise else None
        args = (beta, 1.0 - beta, abar, math.sqrt(beta) if noise else 0.0)
        assert_close(k.ddpm_step(x, eps, z, *args), ref.ddpm_step(x, eps, z, *args), scale=10.0)

    check()


# ----------------------------------------------------------------------------- AdamW


def _on(backend: str, a: np.ndarray):
    """`a` where the backend updates buffers in place: on the GPU for cupy."""
    if backend == "cupy":
        import cupy

        return cupy.asarray(a)
    return a


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_step(backend, dtype):
    k, b, budget = backend_setup(backend)
    shapes = S.row_shapes(b.max_lead + 1, b.max_side, b.max_cols)

    @budget
    @given(
        xs=shapes.flatmap(lambda s: st.tuples(*(S.kernel_arrays(s, dtype) for _ in range(4)))),
        lr=st.floats(1e-5, 0.1),
        wd=st.sampled_from([0.0, 0.1]),
        step=st.integers(1, 2000),
    )
    def check(xs, lr, wd, step):
        p, g, m, v = xs
        v = np.abs(v)  # a second moment is >= 0
        hyper = (lr, 0.9, 0.99, 1e-8, wd, step)
        want = [a.copy() for a in (p, m, v)]
        assert ref.adamw_step(want[0], g, want[1], want[2], *hyper) is None  # in place
        got = [_on(backend, a.copy()) for a in (p, m, v)]
        k.adamw_step(got[0], _on(backend, g), got[1], got[2], *hyper)
        for a, w in zip(got, want, strict=True):
            # |p| ~ 1 and the step is at most lr/(1 - b1^t) ~ 10 lr: absolute error ~ eps |p|
            assert_close(a, w, scale=10.0 * (1.0 + float(np.abs(w).max(initial=0.0))))

    check()


# ----------------------------------------------------------------------------- layer norm


def _layer_norm_inputs(b: Budget, dtype):
    # float64 also gets rows far from 0 (offset 1e3): the two-pass variance must hold
    offsets = (0.0, 3.0) if dtype == np.float32 else (0.0, 3.0, 1e3)
    shapes = S.row_shapes(b.max_lead, b.max_side, b.max_cols)
    return shapes.flatmap(
        lambda s: st.tuples(
            S.kernel_arrays(s, dtype),
            S.kernel_arrays(s, dtype),
            S.kernel_arrays(s[-1:], dtype),
            S.kernel_arrays(s[-1:], dtype),
            st.sampled_from(offsets),
            st.sampled_from([1e-5, 1e-3]),
        )
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_forward_and_backward(backend, dtype):
    k, b, budget = backend_setup(backend)

    @budget
    @given(inputs=_layer_norm_inputs(b, dtype))
    def check(inputs):
        x, dy, w, bias, offset, eps = inputs
        x = (x + dtype(offset)).astype(dtype)
        got = k.layer_norm_forward(x, w, bias, eps)
        want = ref.layer_norm_forward(x, w, bias, eps)
        for g, r in zip(got, want, strict=True):  # y, mean, rstd
            assert_close(g, r, scale=max(1.0, offset))
        _, mean, rstd = want
        n_rows = x.size // x.shape[-1]
        got = k.layer_norm_backward(dy, x, w, mean, rstd)
        want = ref.layer_norm_backward(dy, x, w, mean, rstd)
        # dx = rstd (...): its rounding error grows with rstd (316 for a constant row)
        dx_scale = max(1.0, float(np.max(rstd) * np.max(np.abs(dy * w))))
        for g, r, scale in zip(got, want, (dx_scale, n_rows, n_rows), strict=True):  # dx, dw, db
            assert_close(g, r, scale=scale)

    check()


# ----------------------------------------------------------------------------- GELU


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_forward_and_backward(backend, approximate, dtype):
    k, b, budget = backend_setup(backend)
    shapes = S.row_shapes(b.max_lead, b.max_side, b.max_cols)

    @budget
    @given(xs=pair(shapes, dtype, scales=(1.0, 4.0, 30.0)))
    def check(xs):
        x, dy = xs
        assert_close(k.gelu_forward(x, approximate), ref.gelu_forward(x, approximate))
        got = k.gelu_backward(x, dy, approximate)
        assert_close(got, ref.gelu_backward(x, dy, approximate), scale=4.0)

    check()


# ----------------------------------------------------------------------------- long rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_longer_than_a_block(backend, dtype):
    """N = 300 > 256 threads: each GPU thread strides over two columns of its row."""
    k, _, _ = backend_setup(backend)
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal((2, 300)).astype(dtype) for _ in range(2))
    w, bias = (rng.standard_normal(300).astype(dtype) for _ in range(2))
    assert_close(k.softmax_forward(x), ref.softmax_forward(x))
    logp = ref.log_softmax_forward(x)
    assert_close(k.log_softmax_backward(logp, dy), ref.log_softmax_backward(logp, dy))
    s = rng.standard_normal((2, 2, 300)).astype(dtype)  # T = 2 queries, S = 300 keys
    assert_close(k.causal_softmax_forward(s, 0.5), ref.causal_softmax_forward(s, 0.5))
    y, mean, rstd = ref.layer_norm_forward(x, w, bias)
    assert_close(k.layer_norm_forward(x, w, bias)[0], y)
    got = k.layer_norm_backward(dy, x, w, mean, rstd)
    for g, r in zip(got, ref.layer_norm_backward(dy, x, w, mean, rstd), strict=True):
        assert_close(g, r, scale=2.0)


# ----------------------------------------------------------------------------- threads


@pytest.mark.skipif(mk.why_unavailable("numba-cpu") is not None, reason="numba unavailable")
def test_numba_cpu_on_all_cores_matches_the_reference(dtype):
    """Small arrays run on one core; with the threshold at 0 the same kernels split their
    rows over every thread (layer-norm backward: per-chunk partial sums, 3 chunks here)."""
    k = mk.get("numba-cpu")
    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal((3, 70, 33)).astype(dtype) for _ in range(2))
    w, bias = (rng.standard_normal(33).astype(dtype) for _ in range(2))
    previous = k.set_parallel_min_size(0)
    try:
        assert_close(k.softmax_forward(x), ref.softmax_forward(x))
        s = np.ascontiguousarray(x.transpose(0, 2, 1))  # (3, T=33, S=70)
        assert_close(k.causal_softmax_forward(s, 0.3), ref.causal_softmax_forward(s, 0.3))
        assert_close(k.gelu_backward(x, dy), ref.gelu_backward(x, dy))
        assert_close(
            k.ddpm_step(x, dy, x, 0.1, 0.9, 0.5, 0.3), ref.ddpm_step(x, dy, x, 0.1, 0.9, 0.5, 0.3)
        )
        y, mean, rstd = ref.layer_norm_forward(x, w, bias)
        assert_close(k.layer_norm_forward(x, w, bias)[0], y)
        got = k.layer_norm_backward(dy, x, w, mean, rstd)
        for g, r in zip(got, ref.layer_norm_backward(dy, x, w, mean, rstd), strict=True):
            assert_close(g, r, scale=210.0)
        a = x.reshape(-1, 33)
        c = mk.to_numpy(k.matmul_tiled(a, a.T))
        assert np.all(np.abs(c - a.astype(np.float64) @ a.T) <= matmul_bound(a, a.T, dtype))
    finally:
        k.set_parallel_min_size(previous)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_spreads_over_its_row_only(backend, dtype):
    """As in the reference: a NaN input makes its whole row NaN, other rows stay finite."""
    k, _, _ = backend_setup(backend)
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(dtype)
    x[1, 2] = np.nan
    for op in ("softmax_forward", "log_softmax_forward"):
        y = mk.to_numpy(getattr(k, op)(x))
        assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]])), (op, y)


# ----------------------------------------------------------------------------- group norm + SiLU


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_norm_silu_forward_and_backward(backend, dtype):
    """y = silu(group_norm(x)) per sample and group, and (dx, dweight, dbias), including one
    group (G = 1) and one channel per group (G = C), over images of 1 to 9 pixels a side;
    numba-cpu also with its threads threshold at 0 (the (sample, group) pairs split over
    every thread, each writing its own row of the partial sums of dweight and dbias)."""
    k, b, budget = backend_setup(backend)
    max_n = 1 if b is SIMULATED else 3

    @budget
    @given(
        problem=S.group_norm_shapes(max_n=max_n), seed=st.integers(0, 2**32 - 1),
        offset=st.sampled_from([0.0, 3.0]), eps=st.sampled_from([1e-5, 1e-3]),
        all_cores=st.booleans(),
    )  # fmt: skip
    def check(problem, seed, offset, eps, all_cores):
        threads = backend == "numba-cpu" and all_cores
        previous = k.set_parallel_min_size(0) if threads else None
        try:
            compare(problem, seed, offset, eps)
        finally:
            if threads:
                k.set_parallel_min_size(previous)

    def compare(problem, seed, offset, eps):
        shape, groups = problem
        rng = np.random.default_rng(seed)
        x = (2 * rng.standard_normal(shape) + offset).astype(dtype)  # (N, C, H, W)
        dy = rng.standard_normal(shape).astype(dtype)
        w, bias = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(2))
        got = k.group_norm_silu_forward(x, w, bias, groups, eps)
        want = ref.group_norm_silu_forward(x, w, bias, groups, eps)
        for g, r in zip(got, want, strict=True):  # y, mean, rstd
            assert_close(g, r, scale=4.0 + offset)
        _, mean, rstd = want
        got = k.group_norm_silu_backward(dy, x, w, bias, mean, rstd)
        want = ref.group_norm_silu_backward(dy, x, w, bias, mean, rstd)
        # dx = rstd (...): its rounding error grows with rstd; dw, db sum N H W products
        dx_scale = max(1.0, float(np.max(rstd) * np.max(np.abs(dy * w[None, :, None, None]))))
        sums = shape[0] * shape[2] * shape[3]
        for g, r, scale in zip(got, want, (dx_scale, sums, sums), strict=True):  # dx, dw, db
            assert_close(g, r, scale=4.0 * scale)

    check()
