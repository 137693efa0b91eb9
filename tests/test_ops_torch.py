"""Every op against PyTorch float64: values and gradients, relative error <= 1e-8.

Skipped when torch is not installed; CI installs the `oracle` extra, so it runs there.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen import Tensor, default_dtype
from tests.op_specs import SPECS

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    shapes = np.shape(ours), np.shape(theirs)
    assert shapes[0] == shapes[1], f"{what}: shape {shapes[0]} vs {shapes[1]}"
    scale = max(1.0, float(np.abs(theirs).max(initial=0.0)))
    err = float(np.abs(np.asarray(ours) - theirs).max(initial=0.0))
    assert err <= 1e-8 * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("spec", [s for s in SPECS if s.theirs is not None], ids=repr)
@given(data=st.data())
def test_values_and_gradients_match_pytorch(spec, data):
    arrays, kw = spec.draw(data)
    tts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    ty = spec.theirs(torch, *tts, **kw)
    if ty is None:  # not expressible in PyTorch for this draw
        return
    with default_dtype(np.float64):
        xs = [Tensor(a, requires_grad=True) for a in arrays]
        y = spec.ours(*xs, **kw)
    assert_close(y.data, ty.detach().numpy(), f"{spec.name} value")
    u = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(u)
    ty.backward(torch.tensor(u))
    for i, (x, t) in enumerate(zip(xs, tts, strict=True)):
        tg = np.zeros(x.shape) if t.grad is None else t.grad.numpy()
        xg = np.zeros(x.shape) if x.grad is None else x.grad
        assert_close(xg, tg, f"{spec.name} grad {i}")
