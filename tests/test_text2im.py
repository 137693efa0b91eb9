"""Text to image (§7.2): CLIP guidance (s = 0 is unguided; its bias against finite differences),
classifier-free guidance (the combination, caption dropout), the conditional U-Net, training and
checkpoints, the `text2im` command's errors, and the shipped checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minigen
from minigen import default_dtype
from minigen.cli import main
from minigen.diffusion import (
    DiffusionModel,
    NoiseSchedule,
    Normalizer,
    UNet,
    blas_threads,
    make_scheduler,
    sample_loop,
)
from minigen.gradcheck import gradcheck
from minigen.synthesis import captions as C
from minigen.synthesis.caption_unet import CaptionUNet
from minigen.synthesis.clip import CLIP, CLIPConfig
from minigen.synthesis.clip_train import load_clip, save_clip
from minigen.synthesis.guidance import cfg_eps, clip_grad, guided_step
from minigen.synthesis.sampling import METHODS, Text2Im
from minigen.synthesis.text2im import caption_dropout, train_text2im
from minigen.synthesis.text2im_config import Text2ImConfig
from minigen.synthesis.text2im_io import (
    ASSETS,
    SHIPPED,
    CondModel,
    load_cond,
    load_scenes,
    save_text2im,
)
from minigen.tensor import no_grad

T = 100  # a short noise schedule for the tiny models
SCHEDULE = {"name": "linear", "num_train_timesteps": T}
TINY_CLIP = CLIPConfig(
    embed_dim=8, width=8, heads=2, layers=1, channels=(8, 8), strides=(2, 2), groups=4,
    head_width=16, time_dim=8, num_train_timesteps=T,
)  # fmt: skip
# base 8: the second level's 16 channels make groups of 2 in its GroupNorms (with groups of one
# channel, a GroupNorm would cancel the per-channel time and caption biases)
TINY_UNET = {"kind": "unet", "image_size": 16, "in_channels": 3, "base_channels": 8,
             "channel_mults": [1, 2]}  # fmt: skip
# the conditional U-Net: cross-attention at the 8x8 level and the middle
TINY_XUNET = {**TINY_UNET, "kind": "xattn_unet", "heads": 2, "attn_levels": [1]}
CAPTION = "a red circle above a blue square"
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_models(dtype=np.float32):
    with default_dtype(dtype):
        minigen.manual_seed(0)
        clip = CLIP(TINY_CLIP)
        unet = UNet(**{k: v for k, v in TINY_UNET.items() if k != "kind"})
        cond = CaptionUNet(TINY_XUNET, TINY_CLIP.to_dict(), 0.1)
        cond.null.data[:] = np.random.default_rng(1).standard_normal(cond.null.shape)
    identity = Normalizer(np.asarray(0.0), np.asarray(1.0))
    scenes = DiffusionModel(unet, SCHEDULE, identity, "scenes", (3, 16, 16))
    return clip.eval(), scenes, CondModel(cond.eval(), SCHEDULE)


@pytest.fixture(scope="module")
def models():
    return tiny_models()


# ----------------------------------------------------------------------------- CLIP guidance


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip_guidance_with_scale_zero_is_unguided_sampling(models, sampler):
    clip, scenes, cond = models
    t2i = Text2Im(clip, scenes, cond)
    kw = {"sampler": sampler, "steps": 8, "seed": 5}
    guided = t2i.sample(CAPTION, 3, method="clip", scale=0.0, **kw)
    unguided = t2i.sample(CAPTION, 3, method="none", **kw)
    library = scenes.sample(3, clip_sample=True, **kw).x  # minigen.diffusion's own sampler
    assert np.array_equal(guided, unguided) and np.array_equal(guided, library)
    assert not np.allclose(t2i.sample(CAPTION, 3, method="clip", scale=300.0, **kw), unguided)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip_guided_sampling_is_the_guided_step_from_x_T_to_x_0(models, sampler):
    """Text2Im's CLIP guidance equals a hand-written chain x_T -> x_0 of `guided_step`s."""
    clip, scenes, cond = models
    eta = 0.5 if sampler == "ddim" else 0.0
    got = Text2Im(clip, scenes, cond).sample(
        CAPTION, 2, method="clip", scale=300.0, sampler=sampler, steps=6, seed=4, eta=eta
    )
    sched = make_scheduler(SCHEDULE, sampler, 6, clip_sample=True)
    gen = np.random.default_rng(4)
    x = gen.standard_normal((2, 3, 16, 16), dtype=np.float32)  # x_T
    with blas_threads(1):  # as Text2Im.sample runs (the sums' order is BLAS's)
        for t in (int(t) for t in sched.timesteps):
            grad = clip_grad(clip, x, t, CAPTION)
            x = guided_step(sched, scenes.eps(x, t), t, x, grad, 300.0, gen, eta)  # x_{t-1}
    np.testing.assert_array_equal(got, x)


def _score(clip, x, t, caption):
    """sum_b z_img(x_b, t) . z_txt(c), the quantity whose gradient guides."""
    with no_grad(), default_dtype(np.float64):
        return float((clip.encode_image(x, t).numpy() @ clip.encode_text(caption).numpy().T).sum())


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_guidance_bias_matches_finite_differences(sampler):
    """guided step - unguided step (same noise) = s Sigma_t grad (DDPM), or the DDIM step's
    response to the noise shift -s sqrt(1 - abar_t) grad, with grad by central differences."""
    clip, _, _ = tiny_models(np.float64)
    sched = make_scheduler(SCHEDULE, sampler, 10)
    gen = np.random.default_rng(0)
    x = gen.standard_normal((2, 3, 16, 16))
    eps = gen.standard_normal(x.shape)
    t = int(sched.timesteps[4])
    s = 7.0
    grad = clip_grad(clip, x, t, CAPTION)
    guided = guided_step(sched, eps, t, x, grad, s, np.random.default_rng(1), eta=0.5)
    kw = {"eta": 0.5} if sampler == "ddim" else {}
    plain = sched.step(eps, t, x, generator=np.random.default_rng(1), **kw).prev_sample
    bias = guided - plain
    abar_t = float(sched.alphas_cumprod[t])
    abar_p = float(sched.alphas_cumprod[sched.previous_timestep(t)])
    if sampler == "ddpm":  # the mean moves by s Sigma_t grad, Sigma_t = sigma_t^2
        coef = s * sched.sigma(t) ** 2
    else:  # x_prev = sqrt(abar_p) x0_hat + sqrt(1 - abar_p - sigma^2) eps + sigma z
        sigma2 = 0.25 * (1 - abar_p) / (1 - abar_t) * (1 - abar_t / abar_p)
        d_eps = math.sqrt(1 - abar_p - sigma2) - math.sqrt(abar_p / abar_t * (1 - abar_t))
        coef = -s * math.sqrt(1 - abar_t) * d_eps
    h = 1e-5
    for _ in range(4):  # directional derivatives along random directions
        v = gen.standard_normal(x.shape)
        fd = (_score(clip, x + h * v, t, CAPTION) - _score(clip, x - h * v, t, CAPTION)) / (2 * h)
        assert float((bias * v).sum()) == pytest.approx(coef * fd, rel=1e-5, abs=1e-10)
    assert abs(coef) > 1e-3 and np.abs(bias).max() > 1e-6  # the test measures something


# ----------------------------------------------------------------------------- classifier-free


def test_cfg_combination_is_eps_uncond_plus_w_times_the_difference():
    gen = np.random.default_rng(0)
    u, c = gen.standard_normal((2, 3, 4, 4))
    np.testing.assert_array_equal(cfg_eps(u, c, 0.0), u)
    np.testing.assert_allclose(cfg_eps(u, c, 1.0), c, rtol=1e-12)
    np.testing.assert_allclose(cfg_eps(u, c, 3.0), 3 * c - 2 * u, rtol=1e-12, atol=1e-12)
    for w in (0.5, 2.0):  # linear in w: the midpoint of two weights is the midpoint's weight
        mid = (cfg_eps(u, c, w - 0.5) + cfg_eps(u, c, w + 0.5)) / 2
        np.testing.assert_allclose(mid, cfg_eps(u, c, w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_cfg_sampling_extrapolates_from_the_null_to_the_caption(models, w):
    """The sampler's CFG equals a plain loop over null + w (cond - null) computed by hand."""
    clip, scenes, cond = models
    t2i = Text2Im(clip, scenes, cond)
    got = t2i.sample(CAPTION, 2, method="cfg", scale=w, sampler="ddim", steps=5, seed=3)
    net = cond.denoiser
    with no_grad():
        e_c = net.embed(np.repeat(C.encode_batch([CAPTION]), 2, axis=0))
        e_0 = net.embed(None, 2)

    def eps(x, t):
        u, c = net(x, t, e_0).data, net(x, t, e_c).data
        assert not np.allclose(u, c)  # the caption matters
        return u + w * (c - u)

    gen = np.random.default_rng(3)
    x_T = gen.standard_normal((2, 3, 16, 16), dtype=np.float32)
    want = sample_loop(make_scheduler(SCHEDULE, "ddim", 5, clip_sample=True), eps, x_T, gen)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_caption_dropout_draws_the_null_caption_ten_percent_of_the_time(models):
    gen = np.random.default_rng(0)
    n = 200_000
    rate = caption_dropout(n, 0.1, gen).mean()
    assert abs(rate - 0.1) < 5 * math.sqrt(0.1 * 0.9 / n)  # 5 standard deviations
    assert not caption_dropout(100, 0.0, gen).any() and caption_dropout(100, 1.0, gen).all()
    with pytest.raises(ValueError, match="probability"):
        caption_dropout(4, 1.5, gen)
    net = models[2].denoiser
    tokens = C.encode_batch([CAPTION, "a green cross", "a blue circle", "a red square"])
    drop = np.array([True, False, True, False])
    with no_grad():
        e, g = net.embed(tokens, drop), net.embed(tokens)
    np.testing.assert_array_equal(e.pooled.numpy()[drop], np.tile(net.null.data, (2, 1)))
    np.testing.assert_allclose(e.pooled.numpy()[~drop], g.pooled.numpy()[~drop], rtol=1e-6)
    # a dropped caption shows the cross-attention its null token only, a kept one its tokens
    assert (e.mask[drop, 0]).all() and not e.mask[drop, 1:].any()
    np.testing.assert_array_equal(e.mask[~drop], g.mask[~drop])


def test_a_conditional_unet_reads_its_condition_and_refuses_a_wrong_one():
    with default_dtype(np.float64):
        minigen.manual_seed(0)
        net = UNet(image_size=4, in_channels=3, base_channels=8, channel_mults=(1, 2), cond_dim=5)
        gen = np.random.default_rng(0)
        x, c = gen.standard_normal((2, 3, 4, 4)), gen.standard_normal((2, 5))
        t = np.array([3, 60])
        gradcheck(lambda cc: net(x, t, cc), c)  # the condition's path, by central differences
        with no_grad():
            assert not np.allclose(net(x, t, c).data, net(x, t, c[::-1]).data)
    with pytest.raises(ValueError, match="needs cond"):
        net(x, t)
    with pytest.raises(ValueError, match=r"cond must have shape \(2, 5\)"):
        net(x, t, c[:, :3])
    with pytest.raises(ValueError, match="takes no cond"):
        UNet(image_size=4, in_channels=3, base_channels=4)(x, t, c)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["scenes", "cond"])
def test_training_is_deterministic_and_checkpoints_round_trip(kind, tmp_path):
    cfg = Text2ImConfig(
        kind=kind, steps=3, batch_size=4, base_channels=4, channel_mults=(1, 2), text_width=8,
        text_layers=1, text_heads=2, embed_dim=8, n_train=64, num_train_timesteps=T,
    )  # fmt: skip
    a, b = (train_text2im(cfg, progress=False) for _ in range(2))
    assert a.losses == b.losses and all(np.isfinite(a.losses))
    path = save_text2im(a, tmp_path / f"{kind}.safetensors")
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with no_grad():
        if kind == "scenes":
            m = load_scenes(path)
            np.testing.assert_array_equal(m.denoiser(x, 7).data, a.model(x, 7).data)
        else:
            m = load_cond(path)
            e = a.model.embed(C.encode_batch(["a red circle", "a blue cross"]))
            np.testing.assert_array_equal(m.denoiser(x, 7, e).data, a.model(x, 7, e).data)
    assert m.config["train"]["steps"] == 3 and m.schedule == SCHEDULE


def test_a_v_prediction_model_gives_eps_to_the_samplers(tmp_path):
    """The U-Net predicts v; the model hands the samplers eps = sqrt(abar) v + sqrt(1 - abar)
    x_t, and its checkpoint comes back predicting v."""
    cfg = Text2ImConfig(
        kind="cond", steps=2, batch_size=4, base_channels=4, channel_mults=(1, 2), text_width=8,
        text_layers=1, text_heads=2, embed_dim=8, n_train=64, num_train_timesteps=T,
        prediction="v",
    )  # fmt: skip
    result = train_text2im(cfg, progress=False)
    model = result.model
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    t = np.array([0, T - 1])
    with no_grad():
        e = model.embed(C.encode_batch(["a red circle", "a blue cross"]))
        v, eps = model.raw(x, t, e).data, model(x, t, e).data
        abar = NoiseSchedule.make("linear", T).alphas_cumprod[t].reshape(-1, 1, 1, 1)
        np.testing.assert_allclose(eps, np.sqrt(abar) * v + np.sqrt(1 - abar) * x, atol=1e-5)
        back = load_cond(save_text2im(result, tmp_path / "v.safetensors")).denoiser
        assert back.prediction == "v" and back.config == model.config
        np.testing.assert_array_equal(back(x, t, e).data, eps)
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        Text2ImConfig(kind="cond", prediction="x0")


@pytest.mark.parametrize("kind", ["scenes", "cond"])
def test_sharded_training_does_not_depend_on_the_number_of_workers(kind):
    """Two shards per batch (minigen.parallel): the same weights from one process or two, and
    the same first loss as without shards (the sum of the shards' shares is the batch mean)."""
    kw = {"kind": kind, "steps": 3, "batch_size": 5, "base_channels": 4, "channel_mults": (1, 2),
          "text_width": 8, "text_layers": 1, "text_heads": 2, "embed_dim": 8, "n_train": 64,
          "num_train_timesteps": T}  # fmt: skip
    whole = train_text2im(Text2ImConfig(**kw), progress=False)
    one, two = (
        train_text2im(Text2ImConfig(**kw, shards=2), progress=False, workers=w) for w in (1, 2)
    )
    assert one.losses == two.losses
    for name, value in one.model.state_dict().items():
        np.testing.assert_array_equal(two.model.state_dict()[name], value)
    np.testing.assert_allclose(one.losses[0], whole.losses[0], rtol=1e-5)
    with pytest.raises(ValueError, match="6 shards of a batch of 5"):
        Text2ImConfig(**{**kw, "shards": 6})


def test_the_caption_encoder_can_start_from_clips_text_tower(tmp_path):
    clip = CLIP(CLIPConfig(embed_dim=8, width=8, heads=2, layers=1, num_train_timesteps=T))
    path = save_clip(clip, tmp_path / "clip.safetensors")
    kw = {"kind": "cond", "steps": 1, "batch_size": 2, "base_channels": 4, "lr": 0.0,
          "channel_mults": (1, 2), "n_train": 16, "num_train_timesteps": T}  # fmt: skip
    cfg = Text2ImConfig(**kw, text_width=8, text_layers=1, text_heads=2, embed_dim=8)
    model = train_text2im(Text2ImConfig(**{**cfg.__dict__, "text_init": str(path)}), None, False)
    for name, value in clip.text.state_dict().items():  # lr = 0: still CLIP's weights
        np.testing.assert_allclose(model.model.text.state_dict()[name], value, rtol=1e-6)
    with pytest.raises(ValueError, match="does not fit the text tower"):
        train_text2im(Text2ImConfig(**{**kw, "text_init": str(path)}), None, False)


def test_a_conditional_run_can_continue_from_a_checkpoint(tmp_path):
    kw = {"kind": "cond", "batch_size": 2, "base_channels": 4, "channel_mults": (1, 2),
          "n_train": 16, "num_train_timesteps": T, "text_width": 8, "text_layers": 1,
          "text_heads": 2, "embed_dim": 8}  # fmt: skip
    first = train_text2im(Text2ImConfig(**kw, steps=3), None, False)
    path = save_text2im(first, tmp_path / "cond.safetensors")
    more = train_text2im(Text2ImConfig(**kw, steps=1, lr=0.0, seed=1, init=str(path)), None, False)
    for name, value in first.model.state_dict().items():  # lr = 0: still the first run's weights
        np.testing.assert_allclose(more.model.state_dict()[name], value, rtol=1e-6)
    fresh = train_text2im(Text2ImConfig(**kw, steps=1, lr=0.0, seed=1), None, False)
    assert any(  # without init, another initialisation: the test above can fail
        not np.allclose(fresh.model.state_dict()[n], v) for n, v in first.model.state_dict().items()
    )
    with pytest.raises(ValueError, match="does not fit the weights"):
        train_text2im(Text2ImConfig(**{**kw, "base_channels": 8}, init=str(path)), None, False)


# ----------------------------------------------------------------------------- the command


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a red elephant"], "unknown word 'elephant'"),
        (["a blu circle"], "closest: blue"),
        ([""], "empty caption"),
        (["   "], "empty caption"),
        ([CAPTION, "--image-size", "32"], "trained on 16x16 scenes"),
        ([CAPTION, "--method", "dalle"], "unknown guidance method 'dalle'"),
        ([CAPTION, "--sampler", "euler"], "unknown sampler 'euler'"),
        (["red circle"], "expected 'a' at word 1"),
        ([CAPTION, "--scenes", "nowhere.safetensors", "--method", "none"], "not found"),
    ],
)
def test_bad_input_exits_one_with_one_line(argv, message, tmp_path, capsys):
    assert main(["text2im", *argv, "--out", str(tmp_path / "x.png"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigen: error:") and message in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_train_text2im_writes_a_checkpoint_and_its_loss_curve(tmp_path, capsys):
    out, png = tmp_path / "cond.safetensors", tmp_path / "loss.png"
    args = ["train-text2im", "--model", "cond", "--steps", "2", "--n-train", "32", "--batch-size",
            "2", "--channels", "8", "--mults", "1,2", "--snr-gamma", "5", "--out", str(out),
            "--loss-plot", str(png), "--quiet"]  # fmt: skip
    assert main(args) == 0 and png.read_bytes()[:8] == PNG
    assert load_cond(out).config["train"]["steps"] == 2
    assert load_cond(out).config["train"]["snr_gamma"] == 5
    assert "s of CPU" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(args) == 1 and out.read_bytes() == before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --force" in err[0]
    assert main([*args[:-1], "--model", "dalle", "--force"]) == 1
    assert "unknown model kind 'dalle'; choose one of clip, scenes, cond" in capsys.readouterr().err
    assert main([*args[:-1], "--shards", "3", "--force"]) == 1
    assert "3 shards of a batch of 2: too many" in capsys.readouterr().err
    assert main([*args[:-1], "--shards", "2", "--workers", "3", "--force"]) == 1
    assert "workers must lie in 1 .. shards (2)" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_train_text2im_trains_a_clip_that_text2im_reads(tmp_path, capsys):
    out, png = tmp_path / "clip.safetensors", tmp_path / "clip_loss.png"
    args = ["train-text2im", "--model", "clip", "--steps", "2", "--n-train", "32", "--batch-size",
            "8", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0 and png.read_bytes()[:8] == PNG
    assert "in-batch accuracy" in capsys.readouterr().out
    model = load_clip(out)
    assert model.num_parameters() > 0
    before = out.read_bytes()
    assert main(args) == 1 and out.read_bytes() == before  # nothing overwritten without --force


# ----------------------------------------------------------------------------- shipped models


def test_the_shipped_checkpoints_fit_in_5_mb_and_sample_scenes(tmp_path, capsys):
    assert sum((ASSETS / f).stat().st_size for f in SHIPPED.values()) <= 5_000_000
    t2i = Text2Im()
    for method in METHODS:
        x = t2i.sample(CAPTION, 2, method=method, steps=3, seed=0)
        assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32 and np.isfinite(x).all()
    out = tmp_path / "grid.png"
    args = ["text2im", CAPTION, "--n", "2", "--steps", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0 and out.read_bytes()[:8] == PNG
    assert "properties hold" in capsys.readouterr().out
    assert main(args) == 1  # never overwritten without --force
    assert "pass --force" in capsys.readouterr().err


def test_the_demo_shows_clip_and_classifier_free_guidance_side_by_side(tmp_path, capsys):
    import matplotlib.image

    from minigen import demo

    summary = {"figures": []}
    demo._text2im_step(tmp_path, fast=True, seed=0, summary=summary)
    assert summary["figures"] == [str(tmp_path / "text2im.png")]
    assert (tmp_path / "text2im.png").read_bytes()[:8] == PNG
    for method in ("clip", "cfg"):
        assert 0.0 <= summary[f"text2im_{method}_score"] <= 1.0
    out = capsys.readouterr().out
    assert "CLIP guidance: " in out and "classifier-free: " in out and "properties hold" in out
    h, w = matplotlib.image.imread(tmp_path / "text2im.png").shape[:2]
    assert h > 300 and w > 2 * 300  # two rows of four images, each upscaled well past 16 px


def test_upscale_makes_each_pixel_a_block_and_the_figure_checks_its_rows():
    from minigen.synthesis.sampling import plot_side_by_side, upscale

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    big = upscale(x, 4)
    assert big.shape == (2, 3, 64, 64) and big.dtype == x.dtype
    for dy in range(4):
        for dx in range(4):
            np.testing.assert_array_equal(big[..., dy::4, dx::4], x)
    with pytest.raises(ValueError, match="factor"):
        upscale(x, 0)
    with pytest.raises(ValueError, match="2 images, 1 scores"):
        plot_side_by_side([("clip", x, [0.5])], CAPTION)


def test_mirror_pairs_are_scenes_and_their_mirrors_with_the_same_noise_level():
    from minigen.synthesis.mirrors import mirror_pairs, mirror_safe, mirror_tokens
    from minigen.synthesis.scenes import mirror
    from minigen.synthesis.text2im import draw_batch, scene_data

    data = scene_data(400)
    pool = mirror_safe(data, 0)
    split = C.make_split(0, 0, 0)
    for i in range(len(data)):  # no mirrored caption the pool keeps asserts a held-out relation
        mirrored = C.parse_caption(C.decode(mirror_tokens(data.tokens[i])))
        held = C.is_held_out(mirrored, split.held_out_things, split.held_out_relations)
        assert (i in set(pool)) == (not held)
    assert 0 < len(data) - len(pool) < len(data) // 10  # some, not many, are left out
    half = draw_batch(
        data, pool, 8, np.random.default_rng(0), NoiseSchedule.make("linear", 1000), 0.5
    )
    b = mirror_pairs(half)
    assert all(np.array_equal(b[k][:8], half[k]) for k in half)
    np.testing.assert_array_equal(b["x0"][8:], mirror(b["x0"][:8]))
    np.testing.assert_array_equal(b["eps"][8:], mirror(b["eps"][:8]))
    np.testing.assert_array_equal(b["tokens"][8:], mirror_tokens(b["tokens"][:8]))
    np.testing.assert_array_equal(b["t"][8:], b["t"][:8])
    np.testing.assert_array_equal(b["drop"][8:], b["drop"][:8])
    with pytest.raises(ValueError, match="mirror_pairs"):
        Text2ImConfig(kind="scenes", mirror_pairs=True)
    with pytest.raises(ValueError, match="mirror_pairs"):
        Text2ImConfig(kind="cond", batch_size=7, mirror_pairs=True)


# ----------------------------------------------------------------------------- the one loop
# (minigen.training.Loop): divergence, resuming a run bit for bit, one writer per --out

TINY_RUN = {"steps": 8, "batch_size": 4, "base_channels": 4, "channel_mults": (1, 2),
            "n_train": 48, "num_train_timesteps": T, "warmup": 2, "shards": 2}  # fmt: skip
TINY_TEXT = {"text_width": 8, "text_layers": 1, "text_heads": 2, "embed_dim": 8, "heads": 2}
# the options of the shipped conditional model (benchmarks/train_text2im.sh)
SHIPPED_COND = {"prediction": "v", "snr_gamma": 5.0, "mirror_pairs": True, "cell_weight": 0.5}


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("kind", ["scenes", "cond"])
def test_a_text2im_run_stopped_and_resumed_equals_one_that_never_stopped(kind, tmp_path):
    from minigen.run_state import load_run

    extra = {**TINY_TEXT, **SHIPPED_COND} if kind == "cond" else {}
    cfg = Text2ImConfig(kind=kind, **TINY_RUN, **extra)
    steps = cfg.steps  # a save at the last step keeps the last iterate, to compare
    whole = train_text2im(cfg, None, False, run_dir=tmp_path / "whole", checkpoint_interval=steps)
    run = tmp_path / "run"
    part = train_text2im(cfg, progress=False, run_dir=run, checkpoint_interval=3, until=5)
    assert part.losses == whole.losses[:5] and load_run(run).step == 3
    rest = train_text2im(cfg, progress=False, resume=load_run(run), run_dir=run,
                         checkpoint_interval=steps)  # fmt: skip
    assert rest.losses == whole.losses
    _assert_same(_state(rest.model), _state(whole.model))  # the EMA
    _assert_same(load_run(run).weights, load_run(tmp_path / "whole").weights)  # the last iterate


def test_a_diverging_text2im_run_keeps_the_weights_of_the_step_before(monkeypatch, tmp_path):
    from minigen.run_state import load_run
    from minigen.synthesis import text2im as t2i
    from minigen.training import TrainingDiverged

    made, calls = [], []
    real_make, real_loss = t2i.Text2ImConfig.make_model, t2i.denoising_loss

    def make(cfg):
        made.append(real_make(cfg))
        return made[-1]

    def loss(*args, **kw):  # the third step's loss is nan
        calls.append(1)
        value = real_loss(*args, **kw)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(t2i.Text2ImConfig, "make_model", make)
    monkeypatch.setattr(t2i, "denoising_loss", loss)
    cfg = Text2ImConfig(kind="cond", **{**TINY_RUN, "shards": 1}, **TINY_TEXT)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="training diverged at step 3: the loss is nan"):
        train_text2im(cfg, progress=False, run_dir=run, checkpoint_interval=1)
    state = load_run(run)  # saved after every step: the last is step 2's
    assert state.step == 2
    _assert_same(_state(made[0]), state.weights)


def test_train_text2im_resumes_an_interrupted_run_and_is_the_only_writer(
    tmp_path, monkeypatch, capsys
):
    import subprocess
    import sys

    from minigen.checkpoint import load
    from minigen.synthesis import commands

    args = ["train-text2im", "--model", "cond", "--steps", "6", "--n-train", "32", "--batch-size",
            "4", "--channels", "8", "--mults", "1,2", "--snr-gamma", "5", "--prediction", "v",
            "--mirror-pairs", "--cell-weight", "0.5", "--shards", "2", "--workers", "1",
            "--checkpoint-interval", "2", "--quiet"]  # fmt: skip
    whole, out = tmp_path / "whole.safetensors", tmp_path / "c.safetensors"
    assert main([*args, "--out", str(whole)]) == 0
    assert not (tmp_path / "whole.safetensors.run").exists()
    real = commands.train_text2im

    def killed(*a, **kw):  # the run dies after step 3: its state on disk is step 2's
        real(*a, **kw, until=3)
        raise RuntimeError("killed")

    monkeypatch.setattr(commands, "train_text2im", killed)
    assert main([*args, "--out", str(out)]) == 1 and "killed" in capsys.readouterr().err
    monkeypatch.setattr(commands, "train_text2im", real)

    def one_line(argv) -> str:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("minigen: error:"), err
        return err[0]

    assert "--channels 8 there, 16 here" in one_line(
        [*args, "--out", str(out), "--resume", "--channels", "16"]
    )
    assert main([*args, "--out", str(out), "--resume", "--workers", "2"]) == 0
    assert not (tmp_path / "c.safetensors.run").exists()
    got, want = load(out)[0], load(whole)[0]
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)

    taken = tmp_path / "taken.safetensors"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from minigen.runs import RunLock; "
         f"RunLock({str(taken)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "is being written by another minigen run" in one_line([*args, "--out", str(taken)])
    finally:
        holder.communicate("")
    assert not taken.exists()
