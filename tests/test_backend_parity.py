"""Every backend runs minigen's ops, and a GPT, as the NumPy backend does: values and gradients.

One suite, parametrised over the backends of the switch that can run here ("numba"
always; "cupy" where cupy and a GPU exist, skipped otherwise, naming what is missing),
each compared with the NumPy backend on the same inputs. The ops run through minigen's
autograd (tensors, `backward`), so this checks the dispatch: the kernel-backed functions
that `minigen.dispatch.pick` hands out, their NumPy fallbacks (softmax over another axis,
attention with a mask), what each forward saves for its backward, and that a model runs
unchanged.
The kernels themselves have their own parity suite (test_kernels_parity.py). Inputs are
drawn around block sizes (1, 15, 16, 17, 31, 32, 33, 63, 64, 65), with single rows,
magnitudes up to 1e4 and -inf entries, in float32 and float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigen
from minigen import Tensor, backend, default_dtype, no_grad
from minigen import functional as F
from minigen.diffusion import DDPMScheduler
from minigen.text.gpt import GPT, GPTConfig
from tests import strategies as S

BACKENDS = [
    pytest.param(n, marks=pytest.mark.skipif(backend.why_unavailable(n) is not None,
                                             reason=str(backend.why_unavailable(n))))
    for n in backend.BACKENDS if n != "numpy"
]  # fmt: skip
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
# (rtol, atol relative to the largest finite value) of a backend against NumPy, by dtype:
# the kernels sum in another order and use a polynomial exp in float32
TOL = {np.dtype(np.float32): (1e-4, 1e-5), np.dtype(np.float64): (1e-9, 1e-11)}
EXAMPLES = settings(max_examples=12)


def run(name: str, f: Callable, arrays: list, grad_seed: int = 0) -> tuple[np.ndarray, list]:
    """(f's output, the gradients of its float inputs) under backend `name`, as NumPy arrays.

    Float arrays become tensors that require grad; the output is back-propagated with a
    fixed random upstream gradient.
    """
    with backend.using(name):
        ts = [Tensor(a, dtype=a.dtype, requires_grad=a.dtype.kind == "f") for a in arrays]
        y = f(*ts)
        dy = np.random.default_rng(grad_seed).standard_normal(y.shape).astype(y.dtype)
        y.backward(dy)
        return y.numpy(), [backend.to_numpy(t.grad) for t in ts if t.requires_grad]


def assert_close(got: np.ndarray, want: np.ndarray, scale: float = 1.0) -> None:
    got = backend.to_numpy(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape)
    rtol, atol = TOL[want.dtype]
    finite = np.abs(want[np.isfinite(want)])
    big = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * big * scale)


def assert_same_run(name: str, f: Callable, arrays: list, seed: int = 0, scale: float = 1.0):
    y, grads = run(name, f, arrays, seed)
    y0, grads0 = run("numpy", f, arrays, seed)
    assert_close(y, y0, scale)
    for g, g0 in zip(grads, grads0, strict=True):
        assert_close(g, g0, scale)


def rows(dtype, max_cols: int = 70, masked: bool = False):
    shapes = S.row_shapes(max_lead=2, max_side=4, max_cols=max_cols)
    if masked:
        return shapes.flatmap(lambda s: S.masked_rows(s, dtype))
    return shapes.flatmap(lambda s: S.kernel_arrays(s, dtype, scales=(1.0, 4.0, 30.0)))


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("op", [F.softmax, F.log_softmax], ids=["softmax", "log_softmax"])
@DTYPES
def test_softmax_and_log_softmax(backend_name, op, dtype):
    @EXAMPLES
    @given(x=rows(dtype, masked=True), axis=st.sampled_from([-1, 0]), seed=st.integers(0, 99))
    def check(x, axis, seed):
        if axis == 0 and np.isinf(x).any():  # -inf columns would fill a whole row along axis 0
            x = np.where(np.isinf(x), dtype(-50.0), x)
        assert_same_run(backend_name, lambda t: op(t, axis=axis), [x], seed)

    check()


@pytest.mark.parametrize("backend_name", BACKENDS)
@DTYPES
def test_cross_entropy_with_ignored_targets(backend_name, dtype):
    @EXAMPLES
    @given(logits=rows(dtype), seed=st.integers(0, 2**16))
    def check(logits, seed):
        rng = np.random.default_rng(seed)
        targets = rng.integers(0, logits.shape[-1], logits.shape[:-1])
        targets[rng.random(targets.shape) < 0.2] = -100  # ignore_index
        if (targets == -100).all():
            targets.flat[0] = 0
        assert_same_run(backend_name, lambda t: F.cross_entropy(t, targets), [logits], seed)

    check()


# ----------------------------------------------------------------------------- layer norm, GELU


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("affine", ["weight and bias", "weight", "none"])
@DTYPES
def test_layer_norm(backend_name, affine, dtype):
    @EXAMPLES
    @given(x=rows(dtype), offset=st.sampled_from([0.0, 3.0]), seed=st.integers(0, 2**16))
    def check(x, offset, seed):
        x = (x + dtype(offset)).astype(dtype)
        C = x.shape[-1]
        w, b = np.random.default_rng(seed).standard_normal((2, C)).astype(dtype)
        params = {"weight and bias": [w, b], "weight": [w], "none": []}[affine]

        def f(x, *p):
            return F.layer_norm(x, *p, eps=1e-5)

        # dx = rstd (...): rounding errors grow with rstd (316 for a single column: 1/sqrt(eps))
        rstd = 1 / np.sqrt(x.astype(np.float64).var(axis=-1) + 1e-5)
        assert_same_run(backend_name, f, [x, *params], seed, scale=C * max(1.0, rstd.max()))

    check()


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@DTYPES
def test_gelu(backend_name, approximate, dtype):
    @EXAMPLES
    @given(x=rows(dtype), seed=st.integers(0, 99))
    def check(x, seed):
        assert_same_run(backend_name, lambda t: F.gelu(t, approximate), [x], seed)

    check()


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("kind", ["causal", "full", "boolean mask"])
@DTYPES
def test_scaled_dot_product_attention(backend_name, kind, dtype):
    @EXAMPLES
    @given(shapes=S.backend_attention_shapes(), seed=st.integers(0, 2**16))
    def check(shapes, seed):
        lead, T, S_, D, Dv = shapes
        rng = np.random.default_rng(seed)
        q = (3 * rng.standard_normal((*lead, T, D))).astype(dtype)
        k, v = (rng.standard_normal((*lead, S_, d)).astype(dtype) for d in (D, Dv))
        mask = rng.random((T, S_)) < 0.7
        mask[np.arange(T), rng.integers(0, S_, T)] = True  # every query sees some key

        def f(q, k, v):
            if kind == "boolean mask":  # not a kernel's case: the NumPy fallback
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return F.scaled_dot_product_attention(q, k, v, is_causal=kind == "causal")

        assert_same_run(backend_name, f, [q, k, v], seed, scale=max(T, S_))

    check()


# ----------------------------------------------------------------------------- DDPM


@pytest.mark.parametrize("backend_name", BACKENDS)
@DTYPES
def test_ddpm_scheduler_step(backend_name, dtype):
    scheduler = DDPMScheduler(num_train_timesteps=50)

    @EXAMPLES
    @given(x=rows(dtype), t=st.sampled_from([0, 1, 17, 49]), seed=st.integers(0, 2**16))
    def check(x, t, seed):
        eps, z = np.random.default_rng(seed).standard_normal((2, *x.shape)).astype(dtype)

        def step(name):
            with backend.using(name):
                xp = backend.xp
                out = scheduler.step(
                    xp.asarray(eps), t, xp.asarray(x), variance_noise=xp.asarray(z)
                )
                return backend.to_numpy(out.prev_sample)

        # t = 0 is the last step: no noise (the kernel without z)
        assert_close(step(backend_name), step("numpy"), scale=10.0)

    check()


# ----------------------------------------------------------------------------- a tiny GPT

CONFIGS = {
    "tiny": GPTConfig(vocab_size=11, block_size=17, n_layer=2, n_head=2, n_embd=8),
    "odd sizes, dropout": GPTConfig(
        vocab_size=67, block_size=17, n_layer=1, n_head=3, n_embd=15, dropout=0.1
    ),
}


def gpt_loss_and_grads(name: str, config: GPTConfig, idx, targets) -> tuple[float, dict]:
    with backend.using(name):
        minigen.manual_seed(0)  # the same weights, and the same dropout masks
        model = GPT(config)
        loss = model.loss(idx, targets)
        loss.backward()
        return loss.item(), {n: backend.to_numpy(p.grad) for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gpt_loss_and_every_gradient(backend_name, config, dtype):
    @settings(max_examples=4)
    @given(batch=S.gpt_batches(block_size=17))
    def check(batch):
        B, T, seed = batch
        cfg = CONFIGS[config]
        rng = np.random.default_rng(seed)
        idx, targets = rng.integers(0, cfg.vocab_size, (2, B, T))
        with default_dtype(dtype):
            loss, grads = gpt_loss_and_grads(backend_name, cfg, idx, targets)
            loss0, grads0 = gpt_loss_and_grads("numpy", cfg, idx, targets)
        assert loss == pytest.approx(loss0, rel=TOL[np.dtype(dtype)][0])
        assert grads.keys() == grads0.keys()
        for n in grads0:
            assert_close(grads[n], grads0[n], scale=10.0)

    check()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_gpt_decoding_with_the_kv_cache(backend_name):
    """Cached keys: the kernel's causal mask with S > T (a prompt, then one token)."""
    cfg = CONFIGS["tiny"]
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 5))

    def logits(name):
        with backend.using(name), no_grad():
            minigen.manual_seed(0)
            model = GPT(cfg).eval()
            cache = model.new_cache(batch_size=2)
            first = model(prompt, cache=cache)
            nxt = backend.xp.asarray(np.array([[3], [7]]))
            return backend.to_numpy(first.data), backend.to_numpy(model(nxt, cache=cache).data)

    for got, want in zip(logits(backend_name), logits("numpy"), strict=True):
        assert_close(got, want)


# ----------------------------------------------------------------------------- AdamW


@pytest.mark.parametrize("backend_name", BACKENDS)
@DTYPES
def test_adamw_updates_like_numpy(backend_name, dtype):
    """Three AdamW steps (weight decay on) move the parameters and both moments as the
    NumPy backend does: the fused "adamw_step" entry against optim.adamw_step."""

    def train(name: str) -> list[np.ndarray]:
        with backend.using(name):
            rng = np.random.default_rng(0)
            shapes = [(17, 5), (5,), (3, 3, 2)]
            params = [
                Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes
            ]
            opt = minigen.optim.AdamW(params, lr=0.05, betas=(0.9, 0.99), weight_decay=0.1)
            for step in range(3):
                coefs = [Tensor(rng.standard_normal(s).astype(dtype)) for s in shapes]
                loss = sum(
                    (
                        ((p * c) + p * p * (0.1 * step)).sum()
                        for p, c in zip(params, coefs, strict=True)
                    )
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            return [backend.to_numpy(a) for a in (*[p.data for p in params], *opt.m, *opt.v)]

    got, want = train(backend_name), train("numpy")
    assert len(got) == len(want) == 5  # three parameters, one flat buffer each of m and v
    for g, w in zip(got, want, strict=True):
        assert_close(g, w)
