"""Training (L_simple, EMA), checkpoints that carry their config, sampling, quality measures."""

from __future__ import annotations

import numpy as np
import pytest

import minigen
from minigen import Tensor, checkpoint
from minigen.diffusion import NoiseSchedule, Normalizer
from minigen.diffusion import pipeline as pl
from minigen.diffusion.denoisers import MLPDenoiser
from minigen.diffusion.metrics import frechet_distance, mmd, sliced_wasserstein
from minigen.diffusion.training import (
    EMA,
    TrainConfig,
    denoising_loss,
    diffusion_loss,
    make_denoiser,
    train,
)

TINY_MLP = {"hidden": 16, "depth": 1, "temb_dim": 8}


def tiny_model(T: int = 20, seed: int = 0) -> pl.DiffusionModel:
    minigen.manual_seed(seed)
    norm = Normalizer(np.array([1.0, -2.0]), np.array([2.0, 0.5]))
    den = MLPDenoiser(dim=2, **TINY_MLP)
    return pl.DiffusionModel(den, {"name": "linear", "num_train_timesteps": T}, norm, "moons", (2,))


def test_diffusion_loss_is_the_mse_between_the_noise_and_its_estimate():
    minigen.manual_seed(0)
    model = MLPDenoiser(dim=2, **TINY_MLP)
    sched = NoiseSchedule.make("linear", 100)
    x0 = np.random.default_rng(1).standard_normal((16, 2)).astype(np.float32)
    loss = diffusion_loss(model, sched, x0, np.random.default_rng(5)).item()
    g = np.random.default_rng(5)  # the same draws, by hand
    t = g.integers(0, 100, 16)
    eps = g.standard_normal(x0.shape, dtype=np.float32)
    x_t = (
        np.sqrt(sched.alphas_cumprod[t])[:, None] * x0
        + np.sqrt(1 - sched.alphas_cumprod[t])[:, None] * eps
    )
    expected = ((model(Tensor(x_t.astype(np.float32)), t).data - eps) ** 2).mean()
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_min_snr_loss_weights_each_example_by_min_snr_gamma_over_snr():
    minigen.manual_seed(0)
    model = MLPDenoiser(dim=2, **TINY_MLP)
    sched = NoiseSchedule.make("linear", 100)
    x0 = np.random.default_rng(1).standard_normal((16, 2)).astype(np.float32)
    loss = diffusion_loss(model, sched, x0, np.random.default_rng(5), snr_gamma=5.0).item()
    g = np.random.default_rng(5)  # the same draws, by hand
    t = g.integers(0, 100, 16)
    eps = g.standard_normal(x0.shape, dtype=np.float32)
    abar = sched.alphas_cumprod[t]
    x_t = np.sqrt(abar)[:, None] * x0 + np.sqrt(1 - abar)[:, None] * eps
    per = ((model(Tensor(x_t.astype(np.float32)), t).data - eps) ** 2).mean(axis=1)
    snr = abar / (1 - abar)
    assert (snr > 5).any() and (snr < 5).any()  # both sides of the clip are drawn
    expected = (np.minimum(snr, 5.0) / snr * per).mean()
    assert loss == pytest.approx(float(expected), rel=1e-5)
    # a gamma above every SNR weighs nothing down: L_simple again
    plain = diffusion_loss(model, sched, x0, np.random.default_rng(5)).item()
    big = diffusion_loss(model, sched, x0, np.random.default_rng(5), snr_gamma=1e9).item()
    assert big == pytest.approx(plain, rel=1e-5)
    with pytest.raises(ValueError, match="snr_gamma must be positive, got 0"):
        diffusion_loss(model, sched, x0, np.random.default_rng(5), snr_gamma=0)


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_v_loss_weighs_the_x0_error_by_one_plus_snr(gamma):
    """v = sqrt(abar) eps - sqrt(1 - abar) x_0: a guess v_hat means x0_hat = sqrt(abar) x_t -
    sqrt(1 - abar) v_hat, and ||v - v_hat||^2 = (1 + SNR) ||x_0 - x0_hat||^2 (with gamma:
    1 + min(SNR, gamma)); a model that outputs the true v has loss 0."""
    sched = NoiseSchedule.make("linear", 100)
    g = np.random.default_rng(2)
    x0 = g.standard_normal((12, 2))
    t = np.concatenate([[0, 99], g.integers(0, 100, 10)])
    eps = g.standard_normal(x0.shape)
    abar = sched.alphas_cumprod[t][:, None]  # (B, 1)
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    x0_hat = x0 + 0.3 * g.standard_normal(x0.shape)  # a wrong guess of x_0, as a v
    v_hat = (np.sqrt(abar) * x_t - x0_hat) / np.sqrt(1 - abar)

    def model(x, tt):
        np.testing.assert_allclose(x.data, x_t, rtol=1e-6)
        return Tensor(v_hat)

    loss = denoising_loss(model, sched, x0, t, eps, gamma, prediction="v").item()
    snr = (abar / (1 - abar))[:, 0]
    weight = 1 + (snr if gamma is None else np.minimum(snr, gamma))
    expected = (weight * ((x0 - x0_hat) ** 2).mean(axis=1)).mean()
    assert loss == pytest.approx(float(expected), rel=1e-5)
    v = np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0
    exact = denoising_loss(lambda x, tt: Tensor(v), sched, x0, t, eps, gamma, prediction="v")
    assert exact.item() == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        denoising_loss(model, sched, x0, t, eps, prediction="x0")


def test_ema_follows_its_recurrence():
    minigen.manual_seed(0)
    model = MLPDenoiser(dim=2, **TINY_MLP)
    ema = EMA(model, decay=0.9)
    w0 = {n: p.data.copy() for n, p in model.named_parameters()}
    expected = {n: a.astype(np.float64) for n, a in w0.items()}
    for k in range(30):
        for p in model.parameters():
            p.data += 0.01  # a moving target
        d = min(0.9, (1 + k) / (10 + k))
        for n, p in model.named_parameters():
            expected[n] = d * expected[n] + (1 - d) * p.data
        ema.update(model)
    for n, a in ema.state_dict().items():
        np.testing.assert_allclose(a, expected[n], rtol=1e-5, atol=1e-6)
    # a constant model is a fixed point of the average
    still = EMA(model, decay=0.99)
    for _ in range(5):
        still.update(model)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(still.shadow[n], p.data, rtol=1e-6)


def test_training_reduces_the_loss_on_a_toy():
    cfg = TrainConfig(data="moons", steps=250, batch_size=128, lr=3e-3, warmup=10,
                      num_train_timesteps=100, n_points=2000, model=TINY_MLP)  # fmt: skip
    res = train(cfg, progress=False)
    assert len(res.losses) == 250
    assert np.mean(res.losses[-50:]) < 0.8 * np.mean(res.losses[:20])
    # the EMA model is not the last iterate, but close to it
    ema, raw = res.model.state_dict(), res.raw_model.state_dict()
    assert any(not np.array_equal(ema[k], raw[k]) for k in ema)


def test_train_config_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        TrainConfig(data="mnist")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown denoiser kind"):
        make_denoiser({"kind": "transformer"})
    with pytest.raises(ValueError, match="bad mlp denoiser config"):
        make_denoiser({"kind": "mlp", "width": 3})


def test_sampling_with_a_fixed_seed_is_reproducible():
    m = tiny_model()
    for sampler, kw in (("ddpm", {}), ("ddim", {"steps": 5, "eta": 0.5})):
        a = m.sample(7, sampler=sampler, seed=3, **kw).x
        b = m.sample(7, sampler=sampler, seed=3, **kw).x
        c = m.sample(7, sampler=sampler, seed=4, **kw).x
        assert a.shape == (7, 2)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


def test_trajectories_run_from_white_noise_to_the_samples():
    m = tiny_model(T=20)
    s = m.sample(6, sampler="ddpm", seed=0, record=5)
    assert s.num_steps == 20 and s.frame_t == [20, 15, 10, 5, 0]  # x_T .. x_0
    assert len(s.trajectory) == 5
    np.testing.assert_array_equal(s.trajectory[-1], s.x)
    x_T = np.random.default_rng(0).standard_normal((6, 2), dtype=np.float32)
    np.testing.assert_allclose(s.trajectory[0], m.normalizer.inverse(x_T), rtol=1e-6)


def test_a_checkpoint_carries_everything_sampling_needs(tmp_path):
    m = tiny_model()
    path = m.save(tmp_path / "m.safetensors")
    _, cfg = checkpoint.load(path)
    assert cfg["format"] == pl.FORMAT and cfg["model"]["kind"] == "mlp"
    assert cfg["schedule"] == {"name": "linear", "num_train_timesteps": 20}
    assert cfg["data"]["normalizer"] == {"mean": [1.0, -2.0], "std": [2.0, 0.5]}
    back = pl.load(path)
    np.testing.assert_array_equal(back.sample(5, seed=1).x, m.sample(5, seed=1).x)


def test_loading_refuses_what_is_not_a_diffusion_checkpoint(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint file not found"):
        pl.load(tmp_path / "nope.safetensors")
    other = checkpoint.save(tmp_path / "o.safetensors", {"w": np.zeros(2)}, {"format": "gpt"})
    with pytest.raises(checkpoint.CheckpointError, match="not a minigen diffusion checkpoint"):
        pl.load(other)
    m = tiny_model()
    arrays, cfg = m.denoiser.state_dict(), m.checkpoint_config()
    cfg["model"]["hidden"] = 32  # the weights no longer fit the model
    bad = checkpoint.save(tmp_path / "b.safetensors", arrays, cfg)
    with pytest.raises(checkpoint.CheckpointError, match="b.safetensors.*shape"):
        pl.load(bad)


def test_a_nan_stops_the_sampler():
    m = tiny_model()
    m.denoiser.out.bias.data[...] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        m.sample(3, sampler="ddim", steps=4)


def test_shipped_checkpoints_load_and_sample():
    for name, shape in (("swissroll", (3, 2)), ("digits", (3, 1, 8, 8))):
        m = pl.load(name)
        s = m.sample(3, sampler="ddim", steps=4, seed=0)
        assert s.x.shape == shape and np.isfinite(s.x).all()
    with pytest.raises(ValueError, match="trained on 8x8 images.*16x16"):
        pl.load("digits").check_image_size(16)


# ----------------------------------------------------------------------------- quality measures


def test_mmd_is_zero_on_one_sample_symmetric_and_grows_with_a_shift():
    x = np.random.default_rng(0).standard_normal((300, 2))
    y = np.random.default_rng(1).standard_normal((200, 2))
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-6)
    assert mmd(x, y) == pytest.approx(mmd(y, x), rel=1e-9)
    shifts = [mmd(x, y + [s, 0.0]) for s in (0.0, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(shifts, shifts[1:], strict=False))


def test_sliced_wasserstein_of_a_shift_is_the_mean_projected_shift():
    x = np.random.default_rng(0).standard_normal((500, 1))
    assert sliced_wasserstein(x, x + 0.7) == pytest.approx(0.7, rel=1e-6)
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_of_gaussians_in_closed_form():
    f = np.random.default_rng(0).standard_normal((400, 5)) @ np.diag([1.0, 2.0, 0.5, 1.0, 3.0])
    c = np.array([0.5, -1.0, 0.0, 2.0, 0.1])
    cov = np.cov(f, rowvar=False)
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    # a shift changes only the means: FD = ||c||^2
    assert frechet_distance(f, f + c) == pytest.approx((c**2).sum(), rel=1e-6)
    # doubling: S_2 = 4 S_1, FD = ||mu||^2 + tr(S_1 + 4 S_1 - 4 S_1) = ||mu||^2 + tr S_1
    mu = f.mean(0)
    assert frechet_distance(f, 2 * f) == pytest.approx((mu**2).sum() + np.trace(cov), rel=1e-6)


# ----------------------------------------------------------------------------- the one loop
# (minigen.training.Loop): divergence, resuming a run bit for bit, one writer per --out

RESUME_CFGS = {
    "moons": TrainConfig(data="moons", steps=12, batch_size=16, warmup=3, n_points=200,
                         num_train_timesteps=50, model=TINY_MLP),
    "digits": TrainConfig(data="digits", steps=8, batch_size=4, warmup=2, num_train_timesteps=50,
                          model={"base_channels": 8, "channel_mults": [1, 2]}),
}  # fmt: skip


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model.state_dict().items()}


def _assert_same_weights(a, b) -> None:
    a, b = (x if isinstance(x, dict) else _weights(x) for x in (a, b))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("data", sorted(RESUME_CFGS))
def test_a_run_stopped_and_resumed_equals_one_that_never_stopped(data, tmp_path):
    from minigen.run_state import load_run

    cfg = RESUME_CFGS[data]
    seen = []
    whole = train(cfg, progress=False, callback=lambda s, v: seen.append((s, v)))
    assert seen == list(enumerate(whole.losses))  # callback(step, loss), steps from 0
    run = tmp_path / "m.safetensors.run"
    # the state is saved after step 4; the run stops after step 6 (as if killed there)
    part = train(cfg, progress=False, run_dir=run, checkpoint_interval=4, until=6)
    assert len(part.losses) == 6 and part.losses == whole.losses[:6]
    state = load_run(run)
    assert state.step == 4 and state.config["steps"] == cfg.steps
    rest = train(cfg, progress=False, resume=state)
    assert rest.losses == whole.losses
    _assert_same_weights(rest.raw_model, whole.raw_model)
    _assert_same_weights(rest.model, whole.model)  # the EMA too


def test_a_diverging_run_stops_before_the_update_and_names_the_step(monkeypatch):
    from minigen.diffusion import training as tr
    from minigen.training import TrainingDiverged

    made, calls, before = [], [], {}
    real_make, real_loss = tr.make_denoiser, tr.diffusion_loss

    def make(config):
        made.append(real_make(config))
        return made[-1]

    def loss(*args, **kw):  # the third step's loss is nan
        calls.append(1)
        value = real_loss(*args, **kw)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(tr, "make_denoiser", make)
    monkeypatch.setattr(tr, "diffusion_loss", loss)
    cfg = RESUME_CFGS["moons"]
    with pytest.raises(TrainingDiverged, match="training diverged at step 3: the loss is nan") as e:
        train(cfg, progress=False, callback=lambda s, v: before.update(_weights(made[0])))
    assert isinstance(e.value, FloatingPointError) and e.value.step == 3
    _assert_same_weights(made[0], before)  # the weights of step 2, untouched by step 3


def test_the_run_state_refuses_other_settings_and_a_shorter_run(tmp_path):
    from dataclasses import asdict

    from minigen.checkpoint import CheckpointError
    from minigen.run_state import load_run, prepare_run

    cfg = RESUME_CFGS["moons"]
    run = tmp_path / "m.run"
    train(cfg, progress=False, run_dir=run, checkpoint_interval=2, until=2)
    state = prepare_run(run, resume=True, force=False)
    assert state.config_for(asdict(cfg)) == asdict(cfg)
    assert state.config_for({**asdict(cfg), "steps": 40})["steps"] == 40  # --steps may grow
    with pytest.raises(ValueError, match=r"--lr 0.001 there, 0.002 here.*--seed 0 there, 1 here"):
        state.config_for({**asdict(cfg), "lr": 2e-3, "seed": 1})
    with pytest.raises(ValueError, match="--steps 5 is below the 12 steps"):
        state.config_for({**asdict(cfg), "steps": 5})
    with pytest.raises(ValueError, match="holds an unfinished run; pass --resume"):
        prepare_run(run, resume=False, force=False)
    with pytest.raises(ValueError, match="no unfinished run in"):
        prepare_run(tmp_path / "other.run", resume=True, force=False)
    (run / "trainer_state.json").write_text('{"step": 1}')
    with pytest.raises(CheckpointError, match="from different steps"):
        load_run(run)
    assert prepare_run(run, resume=False, force=True) is None and not run.exists()


def test_train_diffusion_resumes_an_interrupted_run_and_is_the_only_writer(
    tmp_path, monkeypatch, capsys
):
    import subprocess
    import sys

    from minigen.cli import main
    from minigen.diffusion import training as tr
    from minigen.run_state import load_run

    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    args = ["train-diffusion", "--data", "moons", "--steps", "10", "--timesteps", "20",
            "--hidden", "8", "--depth", "1", "--quiet", "--checkpoint-interval", "3"]  # fmt: skip
    whole, out = tmp_path / "whole.safetensors", tmp_path / "m.safetensors"
    assert main([*args, "--out", str(whole)]) == 0
    run = tmp_path / "m.safetensors.run"
    assert not (tmp_path / "whole.safetensors.run").exists()  # removed once --out is written

    real = tr.train

    def killed(*a, **kw):  # the run dies after step 7: its state on disk is step 6's
        real(*a, **kw, until=7)
        raise RuntimeError("killed")

    monkeypatch.setattr(tr, "train", killed)
    assert main([*args, "--out", str(out)]) == 1 and "killed" in capsys.readouterr().err
    monkeypatch.setattr(tr, "train", real)
    assert not out.exists() and load_run(run).step == 6

    def one_line(argv) -> str:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("minigen: error:"), err
        return err[0]

    assert "pass --resume to continue it" in one_line([*args, "--out", str(out)])
    err = one_line([*args, "--out", str(out), "--resume", "--lr", "0.01", "--seed", "2"])
    assert "--lr 0.001 there, 0.01 here" in err and "--seed 0 there, 2 here" in err
    assert "below the 10 steps" in one_line([*args, "--out", str(out), "--resume", "--steps", "8"])
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert not run.exists()
    got, want = checkpoint.load(out)[0], checkpoint.load(whole)[0]
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert "no unfinished run" in one_line([*args, "--out", str(tmp_path / "n"), "--resume"])

    # a second run into the same --out stops at once, in one line naming the owner
    taken = tmp_path / "taken.safetensors"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from minigen.runs import RunLock; "
         f"RunLock({str(taken)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        err = one_line([*args, "--out", str(taken)])
        assert "is being written by another minigen run (pid" in err
    finally:
        holder.communicate("")
    assert not taken.exists() and not (tmp_path / "taken.safetensors.run").exists()


def test_train_diffusion_checks_its_folder_before_the_first_step(tmp_path, monkeypatch, capsys):
    from minigen.cli import main
    from minigen.diffusion import training as tr

    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    steps = []
    monkeypatch.setattr(tr, "diffusion_loss", lambda *a, **k: steps.append(1))  # never reached
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    out = blocked / "m.safetensors"  # its folder is a file: nothing can be written there
    assert main(["train-diffusion", "--steps", "5", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write into {blocked}" in err[0], err
    assert not steps
