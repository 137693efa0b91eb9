"""The image side of the backend switch: convolutions, norms, and the two U-Nets, as NumPy.

test_backend_parity.py checks the ops a GPT needs; these are the ops of the diffusion
models (conv2d at stride 1 and 2 with both ways of its input gradient, group norm,
pooling, upsampling), then whole denoisers: the digits U-Net of §7.2 and the
text-conditioned cross-attention U-Net, each loss and every parameter's gradient under
another backend against the NumPy backend. Skipped, naming what is missing, where a
backend cannot run (cupy without a GPU); "numba" always runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigen
from minigen import Tensor, backend, default_dtype
from minigen import functional as F
from minigen.diffusion import UNet
from minigen.synthesis.xunet import Caption, CrossAttnUNet
from tests import strategies as S
from tests.test_backend_parity import BACKENDS, DTYPES, TOL, assert_close, assert_same_run


@pytest.mark.parametrize("backend_name", BACKENDS)
@DTYPES
def test_conv2d(backend_name, dtype):
    """Stride 1 and 2, C above and below O, and dL/dx both ways (by the flipped kernel at
    stride 1, by col2im when strided)."""

    @settings(max_examples=12)
    @given(a=S.conv_args(), seed=st.integers(0, 2**16))
    def check(a, seed):
        g = np.random.default_rng(seed)
        x, w = g.standard_normal(a["x"]).astype(dtype), g.standard_normal(a["w"]).astype(dtype)
        b = g.standard_normal(a["w"][0]).astype(dtype)

        def conv(x, w, b):
            return F.conv2d(x, w, b, a["stride"], a["padding"])

        assert_same_run(backend_name, conv, [x, w, b], seed)

    check()


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize(
    "op",
    [
        lambda x, w, b: F.group_norm(x, 2, w, b),
        lambda x, w, b: F.avg_pool2d(x) * w.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1),
        lambda x, w, b: F.upsample_nearest2d(x) * w.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1),
    ],
    ids=["group_norm", "avg_pool2d", "upsample_nearest2d"],
)
@DTYPES
def test_image_ops(backend_name, op, dtype):
    g = np.random.default_rng(0)
    x = (3.0 * g.standard_normal((3, 4, 6, 6)) + 1.0).astype(dtype)  # (N, C, H, W)
    w, b = (g.standard_normal(4).astype(dtype) for _ in range(2))
    assert_same_run(backend_name, op, [x, w, b])


def denoiser_loss_and_grads(name: str, make, inputs) -> tuple[float, dict]:
    """eps-prediction loss and every gradient of a freshly seeded denoiser under `name`."""
    with backend.using(name):
        minigen.manual_seed(0)
        model = make()
        x, eps, t, cond = inputs()
        loss = F.mse_loss(model(Tensor(x), t, cond), eps)
        loss.backward()
        return loss.item(), {n: backend.to_numpy(p.grad) for n, p in model.named_parameters()}


def assert_same_denoiser(name: str, make, inputs, dtype) -> None:
    with default_dtype(dtype):
        loss, grads = denoiser_loss_and_grads(name, make, inputs)
        loss0, grads0 = denoiser_loss_and_grads("numpy", make, inputs)
    assert loss == pytest.approx(loss0, rel=TOL[np.dtype(dtype)][0])
    assert grads.keys() == grads0.keys()
    for n in grads0:
        assert_close(grads[n], grads0[n], scale=10.0)


@pytest.mark.parametrize("backend_name", BACKENDS)
@DTYPES
def test_digits_unet_loss_and_every_gradient(backend_name, dtype):
    def inputs():
        g = np.random.default_rng(1)
        x, eps = g.standard_normal((2, 5, 1, 8, 8)).astype(dtype)  # (B, 1, 8, 8) each
        return x, eps, g.integers(0, 1000, 5), None

    assert_same_denoiser(backend_name, lambda: UNet(image_size=8, base_channels=8), inputs, dtype)


@pytest.mark.parametrize("backend_name", BACKENDS)
@DTYPES
def test_text_conditioned_unet_loss_and_every_gradient(backend_name, dtype):
    """Cross-attention over caption tokens, with padded tokens masked out."""

    def inputs():
        g = np.random.default_rng(2)
        x, eps = g.standard_normal((2, 3, 3, 8, 8)).astype(dtype)  # (B, 3, 8, 8) each
        pooled = Tensor(g.standard_normal((3, 16)).astype(dtype))  # (B, E)
        states = Tensor(g.standard_normal((3, 5, 16)).astype(dtype))  # (B, L, D)
        mask = np.arange(5)[None, :] < np.array([[5], [3], [1]])  # (B, L): real tokens
        return x, eps, g.integers(0, 1000, 3), Caption(pooled, states, mask)

    def make():
        return CrossAttnUNet(
            image_size=8, base_channels=8, channel_mults=(1, 2), cond_dim=16, text_dim=16,
            heads=2, attn_levels=(1,),
        )  # fmt: skip

    assert_same_denoiser(backend_name, make, inputs, dtype)


@pytest.mark.parametrize("backend_name", BACKENDS)
@DTYPES
def test_caption_unet_with_a_cell_map_loss_and_every_gradient(backend_name, dtype):
    """The whole conditional denoiser of the shipped kind: bidirectional caption encoder, cell
    map painted on the pixels, cross-attention, and the map's cross-entropy added to the loss."""
    from minigen.synthesis import captions as C
    from minigen.synthesis import scenes as SC
    from minigen.synthesis.caption_unet import CaptionUNet
    from minigen.synthesis.cells import token_cells
    from minigen.synthesis.clip import CLIPConfig

    def run(name):
        with backend.using(name):
            minigen.manual_seed(0)
            unet = {"kind": "xattn_unet", "image_size": 16, "in_channels": 3,
                    "base_channels": 8, "channel_mults": [1, 2], "heads": 2, "attn_levels": [1]}  # fmt: skip
            text = CLIPConfig(embed_dim=8, width=8, heads=2, layers=1, causal=False).to_dict()
            model = CaptionUNet(unet, text, cells=True)
            g = np.random.default_rng(3)
            x, eps = g.standard_normal((2, 2, 3, 16, 16)).astype(dtype)  # (B, 3, 16, 16) each
            tokens = C.encode_batch(["a red circle left of a blue square", "a cyan cross"])
            objects = [[SC.SceneObject("red", "circle", 1, 0), SC.SceneObject("blue", "square", 1, 2)],
                       [SC.SceneObject("cyan", "cross", 0, 1)]]  # fmt: skip
            cells = token_cells(tokens, SC.from_objects(objects))  # (2, L)
            e = model.embed(tokens, np.array([False, True]), cells)
            loss = F.mse_loss(model(Tensor(x), g.integers(0, 1000, 2), e), eps)
            loss = loss + model.cell_loss(e, cells)
            loss.backward()
            return loss.item(), {n: backend.to_numpy(p.grad) for n, p in model.named_parameters()
                                 if p.grad is not None}  # fmt: skip

    with default_dtype(dtype):
        loss, grads = run(backend_name)
        loss0, grads0 = run("numpy")
    assert loss == pytest.approx(loss0, rel=TOL[np.dtype(dtype)][0])
    assert grads.keys() == grads0.keys() and any("cell_where" in n for n in grads0)
    for n in grads0:
        assert_close(grads[n], grads0[n], scale=10.0)


# ----------------------------------------------------------------------------- group norm + SiLU


@pytest.mark.parametrize("backend_name", BACKENDS)
@DTYPES
def test_group_norm_silu(backend_name, dtype):
    """The fused op through autograd (y and the gradients of x, gamma, beta) against NumPy,
    over drawn shapes including G = 1 and G = C."""

    @settings(max_examples=12)
    @given(problem=S.group_norm_shapes(), seed=st.integers(0, 2**16))
    def check(problem, seed):
        shape, groups = problem
        g = np.random.default_rng(seed)
        x = (2.0 * g.standard_normal(shape) + 1.0).astype(dtype)  # (N, C, H, W)
        w, b = (g.standard_normal(shape[1]).astype(dtype) for _ in range(2))
        op = lambda x, w, b: F.group_norm_silu(x, groups, w, b)  # noqa: E731
        assert_same_run(backend_name, op, [x, w, b], seed, scale=4.0)

    check()


@DTYPES
def test_group_norm_silu_on_numpy_is_group_norm_then_silu_bit_for_bit(dtype):
    """On "numpy" the fused op computes what F.silu(F.group_norm(...)) computes, to the bit:
    the U-Net's numbers on the default backend do not change."""
    g = np.random.default_rng(4)
    x, dy = ((2.0 * g.standard_normal((3, 6, 5, 4)) + 1.0).astype(dtype) for _ in range(2))
    w, b = (g.standard_normal(6).astype(dtype) for _ in range(2))
    for groups, affine in ((1, True), (3, True), (6, True), (3, False)):
        outs = []
        for f in (F.group_norm_silu, lambda *a: F.silu(F.group_norm(*a))):
            with backend.using("numpy"):
                ts = [Tensor(a, requires_grad=True) for a in (x, w, b)]
                y = f(ts[0], groups, *(ts[1:] if affine else (None, None)))
                (y * Tensor(dy)).sum().backward()
                outs.append([y.data, *(t.grad for t in ts if t.grad is not None)])
        assert len(outs[0]) == len(outs[1]) == (4 if affine else 2)
        for a, c in zip(*outs, strict=True):
            np.testing.assert_array_equal(a, c)


def _digits_unet_loss(x):
    model = UNet(image_size=8, base_channels=8)
    return F.mse_loss(model(Tensor(x), np.array([3, 500])), x)


def _text_unet_loss(x):
    g = np.random.default_rng(6)
    pooled, states = (
        Tensor(g.standard_normal(s).astype(np.float32)) for s in ((2, 16), (2, 5, 16))
    )
    mask = np.arange(5)[None, :] < np.array([[5], [2]])  # (B, L)
    model = CrossAttnUNet(
        image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), cond_dim=16,
        text_dim=16, heads=2, attn_levels=(1,),
    )  # fmt: skip
    return F.mse_loss(model(Tensor(x), np.array([3, 500]), Caption(pooled, states, mask)), x)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize(
    "loss, sites",
    # the digits U-Net: two per residual block and one before the output conv, 11 with two
    # levels; the text-conditioned one: the first of each FiLM block (5) and the output's
    [(_digits_unet_loss, 11), (_text_unet_loss, 6)],
    ids=["digits UNet", "CrossAttnUNet"],
)
def test_unets_run_group_norm_silu_through_its_dispatch_row(backend_name, loss, sites, monkeypatch):
    """Every SiLU(GroupNorm) site of the U-Nets calls the backend's fused kernel, once
    forward, once backward."""
    calls = {"group_norm_silu_forward": 0, "group_norm_silu_backward": 0}
    with backend.using(backend_name):
        k = backend.kernel_module()
        for name in calls:
            kernel = getattr(k, name)

            def counted(*args, _kernel=kernel, _name=name):
                calls[_name] += 1
                return _kernel(*args)

            monkeypatch.setattr(k, name, counted)
        minigen.manual_seed(0)
        x = np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype(np.float32)
        with default_dtype(np.float32):
            loss(x).backward()
    assert calls == {"group_norm_silu_forward": sites, "group_norm_silu_backward": sites}
