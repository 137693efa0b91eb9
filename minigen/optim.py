"""Optimizers (SGD with momentum, AdamW), gradient clipping and the learning-rate schedule.

Each parameter group lives in one flat buffer: on construction the optimizer
copies the group's parameters into one contiguous array and makes every
parameter's `.data` (and `.grad`) a view into it. An update is then a handful of
vectorised passes over one array, whatever the number of parameters, and
backward() accumulates gradients straight into the flat gradient buffer.

AdamW (Loshchilov & Hutter 2019), with g the gradient at step t:
    p <- p (1 - lr wd)                        decoupled weight decay
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    p <- p - lr m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from minigen import backend, dispatch
from minigen.tensor import Tensor

__all__ = ["Optimizer", "SGD", "AdamW", "adamw_step", "clip_grad_norm_", "warmup_cosine"]


class _FlatGroup:
    """One contiguous buffer for a group's parameters and one for their gradients."""

    def __init__(self, params: list[Tensor]) -> None:
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(
                f"optimizer: a parameter group mixes dtypes {sorted(map(str, dtypes))}"
            )
        xp = backend.array_module(params[0].data)
        total = sum(p.size for p in params)
        self.params = params
        self.data = xp.empty(total, dtype=params[0].dtype)
        self.grad = xp.zeros(total, dtype=params[0].dtype)
        self.data_views, self.grad_views = [], []
        offset = 0
        for p in params:
            n = p.size
            self.data[offset : offset + n] = p.data.reshape(-1)
            dv = self.data[offset : offset + n].reshape(p.shape)
            gv = self.grad[offset : offset + n].reshape(p.shape)
            if p.grad is not None:
                gv[...] = p.grad
            p.data, p.grad = dv, gv
            self.data_views.append(dv)
            self.grad_views.append(gv)
            offset += n

    def sync(self) -> None:
        """Adopt parameters whose .data or .grad was replaced since the last step."""
        for p, dv, gv in zip(self.params, self.data_views, self.grad_views, strict=True):
            if p.data is not dv:
                dv[...] = p.data
                p.data = dv
            if p.grad is not gv:  # None (zero_grad by a module) means no gradient: zero
                gv[...] = 0 if p.grad is None else p.grad
                p.grad = gv


class Optimizer:
    """Base class: parameter groups (dicts with "params" and hyper-parameters), flat buffers."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict[str, Any]] = []
        self.flat: list[_FlatGroup] = []
        seen: set[int] = set()
        for group in groups:
            unique = [p for p in group["params"] if id(p) not in seen and not seen.add(id(p))]
            bad = [p for p in unique if not isinstance(p, Tensor) or not p.requires_grad]
            if bad:
                raise ValueError("optimizer: every parameter must be a Tensor that requires grad")
            if not unique:
                continue
            self.param_groups.append({**defaults, **group, "params": unique})
            self.flat.append(_FlatGroup(unique))
        self.step_count = 0

    def zero_grad(self) -> None:
        """Set every gradient to zero (in the flat buffer, so backward adds in place)."""
        for fg in self.flat:
            fg.sync()
            fg.grad.fill(0)

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.step_count += 1
        for i, (group, fg) in enumerate(zip(self.param_groups, self.flat, strict=True)):
            fg.sync()
            self._update(i, group, fg)

    def _update(self, i: int, group: dict[str, Any], fg: _FlatGroup) -> None:
        """Update group i's flat parameter buffer `fg.data` from its gradient `fg.grad`."""
        raise NotImplementedError

    # -- state, for resumable training ---------------------------------------------------------
    def _buffers(self) -> dict[str, list[Any]]:
        return {}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, meta): the moment buffers as NumPy arrays, and a JSON-able dict."""
        arrays = {
            f"{name}.{i}": backend.to_numpy(buf).copy()
            for name, bufs in self._buffers().items()
            for i, buf in enumerate(bufs)
        }
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return arrays, {"step_count": self.step_count, "param_groups": hyper}

    def load_state_dict(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        """Restore `state_dict`'s output; ValueError naming what is missing or malformed."""
        _check_meta(meta, self.param_groups)
        if len(meta["param_groups"]) != len(self.param_groups):
            raise ValueError(
                f"optimizer state has {len(meta['param_groups'])} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        for name, bufs in self._buffers().items():
            for i, buf in enumerate(bufs):
                key = f"{name}.{i}"
                if key not in arrays or tuple(arrays[key].shape) != buf.shape:
                    got = None if key not in arrays else tuple(arrays[key].shape)
                    raise ValueError(
                        f"optimizer state {key!r}: expected shape {buf.shape}, got {got}"
                    )
                buf[...] = backend.array_module(buf).asarray(arrays[key])
        for group, saved in zip(self.param_groups, meta["param_groups"], strict=True):
            group.update(saved)
        self.step_count = int(meta["step_count"])


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_meta(meta: Any, groups: list[dict[str, Any]]) -> None:
    """Raise ValueError unless `meta` is an optimizer state for these parameter groups: a step
    count and, per group, every hyper-parameter of ours as a finite number (or a list of them)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list):
        raise ValueError("optimizer state: not a dict with a list 'param_groups'")
    if not _is_number(meta.get("step_count")):
        raise ValueError(f"optimizer state: step_count {meta.get('step_count')!r} is not a number")
    for i, (saved, group) in enumerate(zip(meta["param_groups"], groups, strict=False)):
        if not isinstance(saved, dict):
            raise ValueError(f"optimizer state: parameter group {i} is not a dict")
        for key in group:
            if key == "params":
                continue
            v = saved.get(key)
            ok = _is_number(v) or (isinstance(v, list | tuple) and all(map(_is_number, v)))
            if not ok:
                raise ValueError(f"optimizer state: group {i}'s {key} is {v!r}, not a number")


class SGD(Optimizer):
    """SGD with momentum (PyTorch's form): b <- mu b + g;  p <- p - lr b."""

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-2, momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.momentum_buf = [None for _ in self.flat]

    def _buffers(self) -> dict[str, list[Any]]:
        return {"momentum": [b for b in self.momentum_buf if b is not None]}

    def _update(self, i: int, group: dict[str, Any], fg: _FlatGroup) -> None:
        g = fg.grad
        if group["weight_decay"]:
            g = g + group["weight_decay"] * fg.data  # L2 penalty: g <- g + wd p
        if group["momentum"]:
            if self.momentum_buf[i] is None:
                self.momentum_buf[i] = g.copy()  # b_1 = g_1
            else:
                buf = self.momentum_buf[i]
                buf *= group["momentum"]
                buf += g  # b <- mu b + g
            g = self.momentum_buf[i]
        fg.data -= group["lr"] * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (PyTorch's AdamW, step for step)."""

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 0.01,
    ) -> None:  # fmt: skip
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.m = [backend.array_module(fg.data).zeros_like(fg.data) for fg in self.flat]
        self.v = [backend.array_module(fg.data).zeros_like(fg.data) for fg in self.flat]
        self.tmp = [backend.array_module(fg.data).empty_like(fg.data) for fg in self.flat]

    def _buffers(self) -> dict[str, list[Any]]:
        return {"m": self.m, "v": self.v}

    def _update(self, i: int, group: dict[str, Any], fg: _FlatGroup) -> None:
        b1, b2 = group["betas"]
        # one AdamW step over the group's flat buffer: adamw_step below, or the selected
        # backend's fused kernel (minigen/dispatch.py: one pass over p, g, m, v, not ten)
        dispatch.pick(adamw_step)(
            fg.data, fg.grad, self.m[i], self.v[i], self.tmp[i], group["lr"], b1, b2,
            group["eps"], group["weight_decay"], self.step_count,
        )  # fmt: skip


def adamw_step(
    p: Any, g: Any, m: Any, v: Any, tmp: Any, lr: float, beta1: float, beta2: float,
    eps: float, weight_decay: float, step: int,
) -> None:  # fmt: skip
    """One AdamW update (Loshchilov & Hutter 2019, PyTorch's AdamW) of the flat buffers
    p (parameters), m, v (moments) in place, from the gradient g; tmp is scratch of p's
    shape; `step` counts from 1. The NumPy reference of the fused op "adamw_step"."""
    xp = backend.array_module(p)
    b1, b2, wd, t = beta1, beta2, weight_decay, step
    if wd:
        p *= 1 - lr * wd  # p <- p (1 - lr wd)
    # m <- b1 m + (1 - b1) g  =  m + (1 - b1) (g - m)
    xp.subtract(g, m, out=tmp)
    tmp *= 1 - b1
    m += tmp
    # v <- b2 v + (1 - b2) g^2
    v *= b2
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - b2
    v += tmp
    # p <- p - lr/(1 - b1^t) m / (sqrt(v)/sqrt(1 - b2^t) + eps)
    #    = p - lr sqrt(1 - b2^t)/(1 - b1^t) m / (sqrt(v) + eps sqrt(1 - b2^t))
    c2 = math.sqrt(1 - b2**t)
    xp.sqrt(v, out=tmp)
    tmp += eps * c2
    xp.divide(m, tmp, out=tmp)
    tmp *= lr * c2 / (1 - b1**t)
    p -= tmp


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients so their joint L2 norm is at most `max_norm`; returns the norm before."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # ||g|| = sqrt(sum_i g_i^2) over every entry of every gradient (vdot: no temporary array)
    total = math.sqrt(sum(float(backend.array_module(g).vdot(g, g)) for g in grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g *= coef
    return total


def warmup_cosine(
    step: int, lr: float, warmup_steps: int, decay_steps: int, min_lr: float = 0.0
) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then cosine decay to `min_lr` at `decay_steps`
    (nanoGPT's schedule), and `min_lr` after."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    # lr_t = min_lr + (lr - min_lr) (1 + cos(pi ratio)) / 2
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)
