"""`minigen train-diffusion` and `minigen sample-diffusion`: outputs, and errors in one line."""

from __future__ import annotations

import numpy as np
import pytest

from minigen import checkpoint
from minigen.cli import main
from minigen.diffusion import pipeline as pl

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--data", "moons", "--steps", "5", "--timesteps", "20", "--hidden", "8", "--depth", "1"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigen: error:"), err
    return err[0]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)


@pytest.fixture
def trained(tmp_path):
    out = tmp_path / "m.safetensors"
    assert main(["train-diffusion", *TINY, "--out", str(out), "--quiet"]) == 0
    return out


def test_train_writes_a_checkpoint_and_its_loss_curve_then_sample_draws_figure_7_2(
    capsys, trained, tmp_path
):
    assert (tmp_path / "m_loss.png").read_bytes()[:8] == PNG
    assert pl.load(trained).config["train"]["steps"] == 5
    assert "final loss" in capsys.readouterr().out
    png, fig = tmp_path / "s.png", tmp_path / "fig72.png"
    args = ["sample-diffusion", "--checkpoint", str(trained), "--n", "30", "--quiet"]
    assert main([*args, "--out", str(png), "--figure72", str(fig), "--rows", "4"]) == 0
    assert png.read_bytes()[:8] == PNG and fig.read_bytes()[:8] == PNG
    # DDIM with fewer steps and the other DDPM variance
    assert main([*args, "--out", str(png), "--sampler", "ddim", "--steps", "4", "--force"]) == 0
    assert main([*args, "--out", str(png), "--variance", "fixed_large", "--force"]) == 0


def test_existing_outputs_are_not_overwritten_without_force(trained, tmp_path, capsys):
    before = trained.read_bytes()
    assert main(["train-diffusion", *TINY, "--out", str(trained), "--quiet"]) == 1
    assert "exists; pass --force" in one_error_line(capsys)
    assert trained.read_bytes() == before
    png = tmp_path / "taken.png"
    png.write_bytes(b"keep")
    assert main(["sample-diffusion", "--checkpoint", str(trained), "--out", str(png)]) == 1
    assert str(png) in one_error_line(capsys) and png.read_bytes() == b"keep"
    args = ["train-diffusion", *TINY, "--out", str(trained), "--quiet", "--force"]
    assert main(args) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-diffusion", "--data", "mnist"], "unknown data set 'mnist'"),
        (["train-diffusion", "--data", "digits", "--hidden", "8"], "--hidden/--depth are for"),
        (["train-diffusion", *TINY, "--lr", "1e6", "--quiet"], "training diverged"),
        (["sample-diffusion", "--checkpoint", "no/such.safetensors"], "checkpoint file not found"),
        (["sample-diffusion", "--checkpoint", "digits", "--image-size", "16"], "16x16"),
        (["sample-diffusion", "--checkpoint", "digits", "--sampler", "euler"], "unknown sampler"),
        (["sample-diffusion", "--sampler", "ddim", "--variance", "large"], "unknown variance type"),
    ],
)
def test_bad_input_exits_one_with_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out.png")]) == 1
    assert message in one_error_line(capsys)


def test_a_checkpoint_that_yields_nan_stops_sampling_with_one_line(trained, tmp_path, capsys):
    arrays, cfg = checkpoint.load(trained)
    arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
    bad = checkpoint.save(tmp_path / "nan.safetensors", arrays, cfg)
    out = tmp_path / "nan.png"
    assert main(["sample-diffusion", "--checkpoint", str(bad), "--out", str(out), "--quiet"]) == 1
    assert "non-finite" in one_error_line(capsys)
    assert not out.exists()


def test_the_demo_trains_a_2d_model_and_samples_the_shipped_digits(tmp_path, capsys):
    from minigen import demo

    summary = {"figures": []}
    demo._diffusion_steps(tmp_path, fast=True, seed=0, summary=summary)
    names = {"diffusion_moons.png", "diffusion_digits.png", "figure_7_2.png"}
    assert {p.rsplit("/", 1)[-1] for p in summary["figures"]} == names
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert "Figure 7.2" in capsys.readouterr().out
