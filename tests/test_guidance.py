"""How CLIP guidance reads the sample (guidance.ClipGuidance): the gradient through the
denoiser's estimate of x_0 against finite differences, the scale schedules, the repeated
(re-noised) steps against a hand-written chain, and bad settings refused."""

from __future__ import annotations

import numpy as np
import pytest

from minigen import default_dtype
from minigen.diffusion import blas_threads, make_scheduler
from minigen.synthesis.guidance import ClipGuidance, clip_grad, clip_grad_x0, guided_step
from minigen.synthesis.sampling import Text2Im
from minigen.tensor import no_grad
from tests.test_text2im import CAPTION, SCHEDULE, tiny_models


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def test_the_x0_gradient_is_clips_gradient_at_x0_hat_over_sqrt_abar():
    """grad_{x_t} z_img(x0_hat(x_t), 0) . z_txt with eps fixed, by central differences, where
    x0_hat stays inside [-1, 1] (the clip is inactive)."""
    clip, _, _ = tiny_models(np.float64)
    gen = np.random.default_rng(0)
    abar = 0.6
    x0 = gen.uniform(-0.5, 0.5, (2, 3, 16, 16))
    eps = gen.standard_normal(x0.shape)
    x = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps  # x_t

    def score(x_t):
        x0_hat = (x_t - (1 - abar) ** 0.5 * eps) / abar**0.5
        with no_grad(), default_dtype(np.float64):
            z = clip.encode_image(x0_hat, 0).numpy() @ clip.encode_text(CAPTION).numpy().T
        return float(z.sum())

    g = clip_grad_x0(clip, x, eps, abar, CAPTION)
    np.testing.assert_allclose(
        g, clip_grad(clip, x0, 0, CAPTION) / abar**0.5, rtol=1e-9, atol=1e-15
    )
    h = 1e-5
    for _ in range(3):
        v = gen.standard_normal(x.shape)
        fd = (score(x + h * v) - score(x - h * v)) / (2 * h)
        assert float((g * v).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-10)
    assert np.abs(g).max() > 1e-6


def test_the_schedules_weigh_the_scale_by_noise_or_signal():
    for abar in (1e-4, 0.3, 0.9999):
        assert ClipGuidance().weight(abar) == 1.0
        assert ClipGuidance(schedule="noise").weight(abar) == pytest.approx((1 - abar) ** 0.5)
        assert ClipGuidance(schedule="signal").weight(abar) == pytest.approx(abar**0.5)
    for bad, match in (({"target": "eps"}, "target"), ({"schedule": "cosine"}, "schedule"), ({"score": "l2"}, "score"),
                       ({"repeats": 0}, "repeats"), ({"repeats": True}, "repeats")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ClipGuidance(**bad)


@pytest.mark.parametrize("target", ["x_t", "x0"])
def test_repeated_guided_steps_renoise_back_to_t_and_guide_again(models, target):
    """repeats = 2: a hand-written chain where each step is guided, re-noised from t-1 to t by
    the forward process, and guided again with a new eps; schedule "noise" scales s by
    sqrt(1 - abar_t)."""
    clip, scenes, cond = models
    guidance = ClipGuidance(target=target, schedule="noise", repeats=2)
    got = Text2Im(clip, scenes, cond).sample(CAPTION, 2, method="clip", scale=300.0, steps=5,
                                            seed=3, guidance=guidance)  # fmt: skip
    sched = make_scheduler(SCHEDULE, "ddpm", 5, clip_sample=True)
    gen = np.random.default_rng(3)
    x = gen.standard_normal((2, 3, 16, 16), dtype=np.float32)  # x_T
    with blas_threads(1):
        for t in (int(t) for t in sched.timesteps):
            abar, prev = float(sched.alphas_cumprod[t]), sched.previous_timestep(t)
            s = 300.0 * (1 - abar) ** 0.5
            for r in range(2):
                eps = scenes.eps(x, t)
                g = (clip_grad_x0(clip, x, eps, abar, CAPTION) if target == "x0"
                     else clip_grad(clip, x, t, CAPTION))  # fmt: skip
                x_prev = guided_step(sched, eps, t, x, g, s, gen)
                if r == 1 or prev < 0:
                    break
                a = abar / float(sched.alphas_cumprod[prev])
                x = a**0.5 * x_prev + (1 - a) ** 0.5 * gen.standard_normal(x.shape, np.float32)
            x = x_prev
    np.testing.assert_array_equal(got, x)
    once = Text2Im(clip, scenes, cond).sample(CAPTION, 2, method="clip", scale=300.0, steps=5,
                                             seed=3, guidance=ClipGuidance(target, "noise"))  # fmt: skip
    assert not np.allclose(once, got)


def test_the_contrast_gradient_is_that_of_log_p_of_the_caption_among_its_edits():
    """log p(c | x_t) = log softmax_j (e^s z_img . z_txt_j)[c] over c and its minimal edits,
    one set per row; its gradient against central differences."""
    from minigen.synthesis.captions import encode_batch
    from minigen.synthesis.clip_hard import minimal_edits
    from minigen.synthesis.guidance import clip_grad_contrast, contrast_set

    clip, _, _ = tiny_models(np.float64)
    caps = [CAPTION, "a green cross"]
    contrast = contrast_set(clip, encode_batch(caps))
    z_txt, mask, own = contrast
    assert mask.sum(1).tolist() == [1 + len(minimal_edits(c)) for c in caps]
    assert mask[np.arange(2), own].all() and own[0] != own[1]
    gen = np.random.default_rng(0)
    x = gen.standard_normal((2, 3, 16, 16))
    t = 40
    scale = float(clip.scale().item())

    def logp(x):
        with no_grad(), default_dtype(np.float64):
            z = clip.encode_image(x, t).numpy()  # (2, E)
        out = 0.0
        for i in range(2):
            logits = scale * z[i] @ z_txt[mask[i]].T
            j = int(np.flatnonzero(np.flatnonzero(mask[i]) == own[i])[0])
            out += logits[j] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        return out

    g = clip_grad_contrast(clip, x, t, contrast)
    h = 1e-5
    for _ in range(3):
        v = gen.standard_normal(x.shape)
        fd = (logp(x + h * v) - logp(x - h * v)) / (2 * h)
        assert float((g * v).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-10)
    assert np.abs(g).max() > 1e-6
    one = contrast_set(clip, encode_batch([CAPTION]))  # one caption, broadcast to the batch
    np.testing.assert_allclose(clip_grad_contrast(clip, x, t, one)[0], g[0], rtol=1e-9)
