"""The one loss-curve figure every training loop draws (`minigen.plotting.plot_losses`)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from minigen.plotting import plot_losses, save_figure


def _lines(fig):
    return {line.get_label(): line for line in fig.axes[0].get_lines()}


def test_the_batch_loss_its_running_mean_and_the_estimates_are_drawn(tmp_path):
    losses = np.linspace(3.0, 1.0, 500) + 0.1 * np.sin(np.arange(500))
    evals = [{"step": 100, "train": 2.5, "val": 2.6}, {"step": 500, "train": 1.1, "val": 1.3}]
    fig = plot_losses(losses, ylabel="cross-entropy", estimates=evals)
    lines = _lines(fig)
    assert set(lines) == {"batch loss", "mean of 10 steps", "train (estimate)", "validation"}
    x, y = lines["batch loss"].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 501))  # the loss after step k is at k
    np.testing.assert_array_equal(y, losses)
    x, y = lines["mean of 10 steps"].get_data()  # a 50th of the run
    assert x[0] == 10 and len(y) == 491
    assert y[0] == pytest.approx(losses[:10].mean()) and y[-1] == pytest.approx(losses[-10:].mean())
    np.testing.assert_array_equal(lines["validation"].get_data()[1], [2.6, 1.3])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "cross-entropy" and ax.get_yscale() == "linear"
    assert save_figure(fig, tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_short_run_has_no_running_mean_and_a_denoiser_s_curve_is_on_a_log_axis():
    fig = plot_losses([1.0, 0.5, 0.25], "L_simple", r"$\|\epsilon\|^2$", log_scale=True)
    assert list(_lines(fig)) == ["batch loss"]
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_title() == "L_simple"
