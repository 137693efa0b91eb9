"""The denoisers of §7.2: time embedding, MLP and U-Net shapes, gradients, fitting one example."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen
from minigen import Tensor, default_dtype, optim
from minigen import functional as F
from minigen.diffusion.denoisers import MLPDenoiser, timestep_embedding
from minigen.diffusion.unet import UNet
from minigen.gradcheck import gradcheck
from tests.strategies import timestep_batches


@given(timestep_batches(), st.sampled_from([2, 4, 16, 32]))
def test_timestep_embedding_is_sin_and_cos_of_t_times_geometric_frequencies(ts, dim):
    e = timestep_embedding(np.array(ts), dim).astype(np.float64)  # (B, dim)
    assert e.shape == (len(ts), dim)
    half = dim // 2
    # sin^2 + cos^2 = 1 for each frequency
    np.testing.assert_allclose(e[:, :half] ** 2 + e[:, half:] ** 2, 1.0, atol=1e-5)
    # the first frequency is 1: the first column is sin(t)
    np.testing.assert_allclose(e[:, 0], np.sin(np.array(ts, dtype=np.float64)), atol=1e-5)


def test_timestep_embedding_tells_timesteps_apart_and_rejects_odd_sizes():
    e = timestep_embedding(np.arange(1000), 32)
    d2 = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)  # (1000, 1000)
    assert (d2 + np.eye(1000) > 1e-4).all()  # distinct timesteps, distinct features
    with pytest.raises(ValueError, match="even dim"):
        timestep_embedding(np.arange(3), 5)


def test_denoisers_map_a_batch_to_its_own_shape():
    minigen.manual_seed(0)
    mlp = MLPDenoiser(dim=3, hidden=16, depth=2, temb_dim=8)
    assert mlp(np.zeros((5, 3), np.float32), np.arange(5)).shape == (5, 3)
    assert mlp(np.zeros((5, 3), np.float32), 7).shape == (5, 3)  # one t for the batch
    unet = UNet(image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2))
    assert unet(np.zeros((2, 1, 8, 8), np.float32), np.array([0, 999])).shape == (2, 1, 8, 8)
    unet3 = UNet(image_size=8, in_channels=2, base_channels=4, channel_mults=(1, 2, 2))
    assert unet3(np.zeros((1, 2, 8, 8), np.float32), 3).shape == (1, 2, 8, 8)


def test_denoisers_refuse_inputs_they_were_not_built_for():
    minigen.manual_seed(0)
    unet = UNet(image_size=8, base_channels=4)
    with pytest.raises(
        ValueError, match=r"trained on images of shape \(1, 8, 8\).*\(2, 1, 16, 16\)"
    ):
        unet(np.zeros((2, 1, 16, 16), np.float32), 0)
    with pytest.raises(ValueError, match="cannot be halved"):
        UNet(image_size=6, channel_mults=(1, 2, 2))
    mlp = MLPDenoiser(dim=2, hidden=8, depth=1, temb_dim=4)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        mlp(np.zeros((4, 3), np.float32), 0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        mlp(np.zeros((4, 2), np.float32), np.arange(3))
    with pytest.raises(TypeError, match="integers"):
        mlp(np.zeros((4, 2), np.float32), np.zeros(4))


def _param_spot_check(model, loss_fn, per_param: int = 3, eps: float = 1e-6, seed: int = 0):
    """Compare backward()'s parameter gradients with central differences at a few entries."""
    loss = loss_fn()
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    rng = np.random.default_rng(seed)
    checked = 0
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, min(per_param, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            up = loss_fn().item()
            flat[i] = old - eps
            down = loss_fn().item()
            flat[i] = old
            num = (up - down) / (2 * eps)
            ana = grads[name].reshape(-1)[i]
            assert abs(ana - num) <= 1e-6 + 1e-5 * abs(num), f"{name}[{i}]: {ana} vs {num}"
            checked += 1
    return checked


def _weighted(y: Tensor, seed: int = 1) -> Tensor:
    w = np.random.default_rng(seed).standard_normal(y.shape)
    return (y * w).sum()


def test_mlp_denoiser_gradients_match_central_differences():
    with default_dtype(np.float64):
        minigen.manual_seed(0)
        model = MLPDenoiser(dim=2, hidden=6, depth=2, temb_dim=4)
        x = np.random.default_rng(0).standard_normal((3, 2))
        t = np.array([0, 17, 999])
        gradcheck(lambda xt: model(xt, t), x)
        n = _param_spot_check(model, lambda: _weighted(model(Tensor(x), t)))
    assert n >= 3 * len(model.parameters()) - 10


def test_unet_gradients_match_central_differences():
    with default_dtype(np.float64):
        minigen.manual_seed(0)
        model = UNet(image_size=4, in_channels=1, base_channels=4, channel_mults=(1, 2))
        x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
        t = np.array([3, 500])
        gradcheck(lambda xt: model(xt, t), x)
        n = _param_spot_check(model, lambda: _weighted(model(Tensor(x), t)), per_param=2)
    assert n > len(model.parameters())


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_a_denoiser_overfits_a_single_example(kind):
    """One noisy example, its timestep and its noise: the loss goes to ~0."""
    minigen.manual_seed(0)
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model = MLPDenoiser(dim=2, hidden=32, depth=2, temb_dim=8)
        x_t = rng.standard_normal((1, 2)).astype(np.float32)
    else:
        from minigen.diffusion import load_digits

        model = UNet(image_size=8, base_channels=8, channel_mults=(1, 2))
        x_t = load_digits().x[:1]  # (1, 1, 8, 8): one image
    eps = rng.standard_normal(x_t.shape).astype(np.float32)
    t = np.array([400])
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss = F.mse_loss(model(Tensor(x_t), t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0] and losses[-1] < 2e-3, losses[::25]
