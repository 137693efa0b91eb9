"""The one training loop (`minigen.training`): schedule, clipping, EMA, divergence, hooks, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen import functional as F
from minigen import nn, optim, rng
from minigen.tensor import Tensor
from minigen.training import EMA, Every, Loop, Schedule, TrainingDiverged
from tests.strategies import floats

X = np.random.default_rng(0).standard_normal((32, 3))
Y = X @ np.array([[1.0], [-2.0], [0.5]])


def make(steps: int = 10, **kw) -> tuple[nn.Module, Loop]:
    rng.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = optim.AdamW(model.parameters(), lr=0.1)
    return model, Loop(model, opt, steps, progress=False, **kw)


def batch_loss(model: nn.Module, gen: np.random.Generator) -> Tensor:
    idx = gen.integers(0, len(X), 8)  # (8,)
    return F.mse_loss(model(Tensor(X[idx])), Y[idx])


@given(lr=floats(1e-4, 1.0), warmup=st.integers(0, 20), decay=st.integers(0, 60),
       frac=floats(0.0, 1.0), step=st.integers(0, 100))  # fmt: skip
def test_the_schedule_warms_up_then_decays_to_the_final_rate(lr, warmup, decay, frac, step):
    s = Schedule(lr, warmup, decay, lr * frac)
    assert s(step) == optim.warmup_cosine(step, lr, warmup, decay, lr * frac)
    assert min(lr * frac, lr * 1 / (warmup + 1)) - 1e-15 <= s(step) <= lr + 1e-15
    if step >= max(warmup, decay):
        assert s(step) == lr * frac
    assert Schedule.constant(lr)(step) == lr


def test_bad_schedules_and_loops_are_refused():
    with pytest.raises(ValueError, match="lr must be finite"):
        Schedule(float("nan"), 0, 1, 0.0)
    with pytest.raises(ValueError, match="warmup"):
        Schedule(1.0, -1, 1, 0.0)
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="grad_clip"):
        Loop(model, optim.SGD(model.parameters(), lr=0.1), 3, grad_clip=-1.0)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)


def test_a_step_is_the_hand_written_update():
    """One loop step = zero_grad, backward, clip to norm c, AdamW step, EMA update."""
    model, loop = make(grad_clip=0.05, ema_decay=0.9)
    twin = nn.Linear(3, 1)
    twin.load_state_dict(model.state_dict())
    w0 = twin.state_dict()
    opt = optim.AdamW(twin.parameters(), lr=0.1)
    loop.run(lambda k: batch_loss(model, np.random.default_rng(k)), until=1)
    loss = batch_loss(twin, np.random.default_rng(0))
    opt.zero_grad()
    loss.backward()
    norm = optim.clip_grad_norm_(twin.parameters(), 0.05)
    assert norm > 0.05  # the clip acted
    opt.step()
    for name, p in twin.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], p)
    # w_ema = d w_0 + (1 - d) w_1 with d = min(0.9, 1/10) at the first update
    for name, p in twin.state_dict().items():
        np.testing.assert_allclose(loop.ema.shadow[name], 0.1 * w0[name] + 0.9 * p, rtol=1e-12)
    assert loop.ema.updates == 1


@given(decay=floats(0.0, 0.99), steps=st.integers(1, 6))
def test_the_ema_is_the_moving_average_of_the_iterates(decay, steps):
    model, loop = make(steps, ema_decay=decay)
    expected = {n: p.copy() for n, p in model.state_dict().items()}
    k = 0

    def step_fn(i: int) -> Tensor:
        return batch_loss(model, np.random.default_rng(i))

    def average(lp: Loop) -> None:
        nonlocal k
        d = min(decay, (1 + k) / (10 + k))
        for n, p in model.state_dict().items():
            expected[n] = d * expected[n] + (1 - d) * p
        k += 1

    loop.run(step_fn, [Every(1, average)])
    for n, s in loop.ema.shadow.items():
        np.testing.assert_allclose(s, expected[n], rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy, on the way to the NaN
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["loss", "gradient norm"])
def test_divergence_stops_before_the_update(bad, where):
    model, loop = make(grad_clip=1.0)
    gen = np.random.default_rng(0)
    snapshots: list[dict] = []

    def step_fn(k: int) -> Tensor | float:
        loss = batch_loss(model, gen)
        if k == 3 and where == "loss":
            return loss * bad
        if k == 3:  # a finite loss whose gradient is not
            loop.opt.zero_grad()
            loss.backward()
            model.weight.grad.flat[1] = bad
            return loop.apply(loss.item())
        return loss

    with pytest.raises(TrainingDiverged, match=f"diverged at step 4: the {where} is"):
        loop.run(step_fn, [Every(1, lambda lp: snapshots.append(model.state_dict()))])
    assert loop.step == 3 and len(loop.losses) == 3
    for n, p in model.state_dict().items():
        np.testing.assert_array_equal(p, snapshots[-1][n])


def test_hooks_run_every_n_steps_and_at_the_end():
    model, loop = make(10)
    seen: dict[str, list[int]] = {"3": [], "end": [], "never": []}
    hooks = [
        Every(3, lambda lp: seen["3"].append(lp.step)),
        Every(0, lambda lp: seen["end"].append(lp.step)),
        Every(0, lambda lp: seen["never"].append(lp.step), at_end=False),
    ]
    loop.run(lambda k: batch_loss(model, np.random.default_rng(k)), hooks)
    assert seen == {"3": [3, 6, 9, 10], "end": [10], "never": []}


def test_a_float_from_the_step_is_taken_as_already_applied():
    model, loop = make(4)

    def step_fn(k: int) -> float:
        loop.opt.zero_grad()
        loss = batch_loss(model, np.random.default_rng(k))
        loss.backward()
        return loop.apply(loss.item()) * 0 + 7.0

    assert loop.run(step_fn) == [7.0] * 4 and loop.opt.step_count == 4


def test_state_round_trip_resumes_bit_for_bit():
    """Stop after 4 steps, restore the state into a fresh loop: the same losses and weights as
    a run of 9 steps that never stopped (generators included)."""

    def run(stop: int | None, state=None):
        model, _ = make()
        gen = np.random.default_rng(5)
        loop = Loop(model, optim.AdamW(model.parameters(), lr=0.05), 9,
                    Schedule(0.05, 2, 9, 0.005), 1.0, 0.9, {"batches": gen}, progress=False)  # fmt: skip
        if state is not None:
            model.load_state_dict(state[0])
            loop.load_state_dict(*state[1])
        loop.run(lambda k: batch_loss(model, gen) + Tensor(rng.generator().random()), until=stop)
        return model.state_dict(), loop.state_dict(), list(loop.losses)

    full = run(None)
    part = run(4)
    rest = run(None, part[:2])
    assert rest[2] == full[2]
    for n in full[0]:
        np.testing.assert_array_equal(rest[0][n], full[0][n])
    for n in full[1][0]:
        np.testing.assert_array_equal(rest[1][0][n], full[1][0][n])


def test_a_malformed_state_is_refused_in_one_line():
    model, loop = make()
    arrays, state = loop.state_dict()
    for bad, match in [
        ({**state, "step": "x"}, "malformed"),
        ({k: v for k, v in state.items() if k != "rng"}, "incomplete"),
        ({**state, "step": 2}, "inconsistent"),
        ({**state, "generators": {"x": {}}}, "generators"),
        ({**state, "rng": {"state": 1}}, "random generators"),
    ]:
        with pytest.raises(ValueError, match=match):
            loop.load_state_dict(arrays, bad)


def test_no_clip_leaves_the_gradient_alone():
    model, loop = make(grad_clip=0.0)
    loss = batch_loss(model, np.random.default_rng(0)) * 1e6
    loop.opt.zero_grad()
    loss.backward()
    g = [p.grad.copy() for p in model.parameters()]
    norm = optim.clip_grad_norm_(model.parameters(), math.inf)
    assert norm > 1 and all(
        np.array_equal(a, p.grad) for a, p in zip(g, model.parameters(), strict=True)
    )
