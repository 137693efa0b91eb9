"""minigen.parallel: a batch's gradient as the sum of its shards', over worker processes."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
from hypothesis import given

from minigen import Tensor, default_dtype, nn
from minigen import functional as F
from minigen.parallel import ShardedBackward
from tests.strategies import shard_splits


class Net(nn.Module):
    """A small MLP with a parameter the loss may leave out (`unused`)."""

    def __init__(self, width: int = 5) -> None:
        self.fc1, self.fc2 = nn.Linear(3, width), nn.Linear(width, 2)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: Any) -> Tensor:
        return self.fc2(F.gelu(self.fc1(Tensor(x))))  # (B, 2)


def build(width: int = 5, dtype: Any = np.float64) -> Net:
    with default_dtype(dtype):
        return Net(width)


def shard_loss(model: Net, shard: dict[str, Any]) -> Tensor:
    """The shard's share of the batch's mean squared error."""
    if shard.get("fail"):
        raise ArithmeticError("this shard was told to fail")
    return F.mse_loss(model(shard["x"]), shard["y"]) * shard["share"]


def batch(B: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    return gen.standard_normal((B, 3)), gen.standard_normal((B, 2))


def split(x: np.ndarray, y: np.ndarray, shards: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"x": x[rows], "y": y[rows], "share": len(rows) / len(x), **extra}
        for rows in np.array_split(np.arange(len(x)), shards)
    ]


def grads(model: nn.Module) -> list[np.ndarray | None]:
    return [None if p.grad is None else np.array(p.grad) for p in model.parameters()]


@given(shard_splits())
def test_sum_of_shards_is_the_batch_gradient(args):
    """grad L = sum_k grad((B_k / B) L_k): the shards' gradients add up to the full batch's."""
    B, S, seed = args
    x, y = batch(B, seed)
    full, sharded = build(), build()
    sharded.load_state_dict(full.state_dict())
    loss = F.mse_loss(full(x), y)
    loss.backward()
    with ShardedBackward(sharded, build, shard_loss, shards=S) as step:
        value = step(split(x, y, S))
    np.testing.assert_allclose(value, loss.item(), rtol=1e-12)
    for g_full, g_sharded in zip(grads(full), grads(sharded), strict=True):
        if g_full is None:  # `unused`: no gradient either way
            assert g_sharded is None
        else:
            np.testing.assert_allclose(g_sharded, g_full, rtol=1e-10, atol=1e-14)


def test_one_shard_is_plain_backward():
    x, y = batch(6, 0)
    a, b = build(), build()
    b.load_state_dict(a.state_dict())
    F.mse_loss(a(x), y).backward()
    with ShardedBackward(b, build, shard_loss, shards=1) as step:
        step(split(x, y, 1))
    for ga, gb in zip(grads(a), grads(b), strict=True):
        assert (ga is None and gb is None) or np.array_equal(ga, gb)


def test_workers_do_not_change_the_gradient():
    """Three shards over two processes give the gradient of three shards here, bit for bit,
    step after step (the replicas follow the weights as they change)."""
    x, y = batch(7, 1)
    build32 = partial(build, 5, np.float32)
    here, there = build32(), build32()
    there.load_state_dict(here.state_dict())
    with (
        ShardedBackward(here, build32, shard_loss, shards=3, workers=1) as a,
        ShardedBackward(there, build32, shard_loss, shards=3, workers=2) as b,
    ):
        for _ in range(3):
            for m in (here, there):
                m.zero_grad()
            va, vb = a(split(x, y, 3)), b(split(x, y, 3))
            assert va == vb
            for ga, gb in zip(grads(here), grads(there), strict=True):
                assert (ga is None and gb is None) or np.array_equal(ga, gb)
            for m in (here, there):  # a step of SGD, so the next call sees new weights
                for p in m.parameters():
                    if p.grad is not None:
                        p.data -= 0.1 * p.grad


def test_bad_settings_and_shards_are_refused():
    model = build()
    with pytest.raises(ValueError, match="workers must lie in 1 .. shards"):
        ShardedBackward(model, build, shard_loss, shards=2, workers=3)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        ShardedBackward(model, build, shard_loss, shards=0)
    with pytest.raises(ValueError, match="does not build the same model"):
        ShardedBackward(model, partial(build, 4), shard_loss, shards=2)
    x, y = batch(4, 0)
    with ShardedBackward(model, build, shard_loss, shards=2) as step:
        with pytest.raises(ValueError, match="expected 2 shards, got 3"):
            step(split(x, y, 3))
    mixed = build()
    mixed.fc2.weight.data = mixed.fc2.weight.data.astype(np.float32)  # two dtypes: no buffer fits
    with pytest.raises(ValueError, match=r"2 shards need .* NumPy arrays of one dtype; got NumPy"):
        ShardedBackward(mixed, build, shard_loss, shards=2)


def test_a_worker_error_reaches_the_caller():
    """An exception in a worker comes back with its traceback; a wrong replica is refused."""
    model = build()
    with pytest.raises(ValueError, match="does not build the same model"):
        ShardedBackward(model, partial(build, 4), shard_loss, shards=2, workers=2)
    x, y = batch(4, 0)
    with ShardedBackward(model, build, shard_loss, shards=2, workers=2) as step:
        shards = split(x, y, 2)
        shards[1]["fail"] = True
        with pytest.raises(RuntimeError, match="a worker failed(.|\n)*told to fail"):
            step(shards)
    with pytest.raises(RuntimeError, match="called after close"):
        step(split(x, y, 2))


def test_workers_take_the_callers_backend_and_default_dtype():
    """Under the "numba" backend (fused kernels) and float64 by default, a worker computes its
    shard as this process would: the same gradient bit for bit from one process or two."""
    from minigen import backend

    with backend.using("numba"), default_dtype(np.float64):
        x, y = batch(6, 2)
        here, there = Net(), Net()
        there.load_state_dict(here.state_dict())
        with (
            ShardedBackward(here, Net, shard_loss, shards=2, workers=1) as a,
            ShardedBackward(there, Net, shard_loss, shards=2, workers=2) as b,
        ):
            assert a(split(x, y, 2)) == b(split(x, y, 2))
    for ga, gb in zip(grads(here), grads(there), strict=True):
        assert (ga is None and gb is None) or np.array_equal(ga, gb)
