"""The one training loop: every trainer of minigen (GPT, RLHF's stages and PPO, the denoisers,
CLIP, the text-to-image models) runs its steps through `Loop`.

What a trainer writes is only its own: how to draw a batch and compute the loss (`step_fn`),
and what to log. The loop owns everything else, once:

- the learning-rate schedule: linear warm-up to `lr`, then cosine decay to `final_lr`
  (nanoGPT's schedule, `Schedule`; `final_lr = lr` and `warmup = 0` give a constant rate);
- one update: zero the gradients, backward, check them, clip them, the optimizer's step, the
  EMA's update;
- divergence: a non-finite loss or gradient norm stops the run *before* the optimizer's step,
  with `TrainingDiverged` ("training diverged at step N ..."), so the weights and the last
  checkpoint on disk are the last good ones;
- the progress bar, and hooks that run every N steps and at the end (evaluation, checkpoints);
- its own state for resuming: the step, the loss history, the optimizer's moments, the EMA,
  and the state of every random generator the trainer registers, so that a resumed run
  computes the same losses, bit for bit, as one that never stopped.

The update, with g the gradient of the batch loss L at step k:

    lr_k = warm-up/cosine(k)                        (`Schedule`)
    g <- g min(1, c / ||g||)                        (clipping to norm c, when c > 0)
    w <- AdamW(w, g, lr_k)                          (`minigen.optim`)
    w_ema <- d w_ema + (1 - d) w                    (`EMA`, when the trainer keeps one)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minigen import optim
from minigen import rng as _rng
from minigen.tensor import Tensor

__all__ = ["Schedule", "EMA", "Every", "Loop", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError, RuntimeError):
    """The loss or the gradient is not finite: the run stopped before the update."""

    def __init__(self, step: int, what: str, value: float) -> None:
        super().__init__(
            f"training diverged at step {step}: the {what} is {value} (the weights and the last "
            "checkpoint are from before it; lower the learning rate or clip the gradient)"
        )
        self.step = step


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up to `lr` over `warmup` steps, cosine decay to `final_lr` at step
    `decay_steps`, `final_lr` after (see `minigen.optim.warmup_cosine`)."""

    lr: float
    warmup: int
    decay_steps: int
    final_lr: float

    def __post_init__(self) -> None:
        for name in ("lr", "final_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"Schedule: {name} must be finite and >= 0, got {v}")
        if self.warmup < 0 or self.decay_steps < 0:
            raise ValueError(
                f"Schedule: warmup and decay_steps must be >= 0, got {self.warmup}, "
                f"{self.decay_steps}"
            )

    @classmethod
    def constant(cls, lr: float) -> Schedule:
        return cls(lr, 0, 0, lr)

    def __call__(self, step: int) -> float:
        return optim.warmup_cosine(step, self.lr, self.warmup, self.decay_steps, self.final_lr)


class EMA:
    """An exponential moving average of a model's parameters (Ho et al. sample with it)."""

    def __init__(self, model: Any, decay: float = 0.999) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA: the decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]
        self.shadow = {n: p.data.copy() for n, p in model.named_parameters()}
        self.updates = 0

    def update(self, model: Any) -> None:
        # d = min(decay, (1 + k) / (10 + k)): early on the average forgets its start faster
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in model.named_parameters():
            s = self.shadow[name]
            # w_ema <- d w_ema + (1 - d) w
            s *= d
            s += (1 - d) * p.data
        self.updates += 1

    def state_dict(self) -> dict[str, np.ndarray]:
        return {n: a.copy() for n, a in self.shadow.items()}

    def load_state_dict(self, arrays: dict[str, Any], updates: int) -> None:
        missing = sorted(set(self.shadow) - set(arrays))
        if missing:
            raise ValueError(f"EMA state: missing {missing[:5]}")
        for n, s in self.shadow.items():
            s[...] = arrays[n]
        self.updates = int(updates)

    def copy_to(self, model: Any) -> Any:
        model.load_state_dict(self.shadow)
        return model


@dataclass
class Every:
    """A hook: `fn(loop)` after every `interval`-th step (0: never) and, if `at_end`, after
    the last step of the run."""

    interval: int
    fn: Callable[[Loop], Any]
    at_end: bool = True

    def due(self, step: int, last: int) -> bool:
        return bool(self.interval and step % self.interval == 0) or (self.at_end and step == last)


def _finite(x: float) -> bool:
    return math.isfinite(x)


class Loop:
    """Runs `steps` optimisation steps of `model` with `opt` (see the module docstring).

    Args:
        model: a `minigen.nn.Module` (its parameters are clipped and averaged).
        opt: its optimizer.
        steps: the run's length (a resumed run continues from `loop.step`).
        schedule: the learning rate per step (None: leave the optimizer's rate alone).
        grad_clip: clip the gradient to this norm (0: no clipping; the norm is checked anyway).
        ema_decay: keep an EMA of the weights with this decay (None: none).
        generators: NumPy generators the trainer draws from, saved and restored with the state
            (minigen's own generator, `minigen.rng`, always is).
        desc: the progress bar's label; `progress=False` hides it, `leave` keeps it at the end.
    """

    def __init__(
        self,
        model: Any,
        opt: optim.Optimizer,
        steps: int,
        schedule: Schedule | None = None,
        grad_clip: float = 0.0,
        ema_decay: float | None = None,
        generators: dict[str, np.random.Generator] | None = None,
        desc: str = "train",
        progress: bool = True,
        leave: bool = True,
    ) -> None:
        if steps < 0:
            raise ValueError(f"Loop: steps must be >= 0, got {steps}")
        if not (math.isfinite(grad_clip) and grad_clip >= 0):
            raise ValueError(f"Loop: grad_clip must be finite and >= 0, got {grad_clip}")
        self.model, self.opt, self.steps = model, opt, steps
        self.schedule, self.grad_clip = schedule, grad_clip
        self.params = model.parameters()
        self.ema = EMA(model, ema_decay) if ema_decay is not None else None
        self.generators = dict(generators or {})
        self.desc, self.progress, self.leave = desc, progress, leave
        self.step = 0  # steps done
        self.losses: list[float] = []  # losses[i]: the loss of step i + 1
        self.postfix: dict[str, str] = {}  # shown on the progress bar beside the loss
        self._bar: Any = None

    # -- one update -------------------------------------------------------------------------
    def update(self, loss: Tensor) -> float:
        """Backward from `loss` into zeroed gradients, then `apply` them; returns the loss."""
        self.opt.zero_grad()
        loss.backward()
        return self.apply(loss.item())

    def apply(self, value: float) -> float:
        """Check the loss `value` and the gradients now in the parameters, clip them, step the
        optimizer and the EMA. Raises TrainingDiverged (before the step) if either is not
        finite."""
        here = self.step + 1
        if not _finite(value):
            raise TrainingDiverged(here, "loss", value)
        if self.grad_clip:
            norm = optim.clip_grad_norm_(self.params, self.grad_clip)
        else:
            norm = optim.clip_grad_norm_(self.params, math.inf)  # the norm only: coef is 0 < 1
        if not _finite(norm):
            raise TrainingDiverged(here, "gradient norm", norm)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return value

    # -- the loop ---------------------------------------------------------------------------
    def run(
        self,
        step_fn: Callable[[int], Tensor | float],
        hooks: Sequence[Every] = (),
        until: int | None = None,
    ) -> list[float]:
        """Run from `self.step` to `steps` (or stop after step `until`, as if interrupted).

        `step_fn(k)` does step k (0-based): it returns the batch loss as a Tensor (the loop
        then calls `update`), or as a float after calling `update` / `apply` itself (sharded
        gradients, PPO's several updates per iteration). Hooks run after the step is counted.
        Returns the loss history."""
        from tqdm.auto import tqdm

        stop = self.steps if until is None else min(until, self.steps)
        self._bar = tqdm(
            total=self.steps, initial=self.step, desc=self.desc, disable=not self.progress,
            leave=self.leave,
        )  # fmt: skip
        try:
            while self.step < stop:
                self.one_step(step_fn)
                for hook in hooks:
                    if hook.due(self.step, self.steps):
                        hook.fn(self)
                if self.step % 10 == 0 or self.step == stop:
                    mean = float(np.mean(self.losses[-100:]))
                    self._bar.set_postfix(loss=f"{mean:.4f}", **self.postfix, refresh=False)
                self._bar.update(1)
        finally:
            self._bar.close()
            self._bar = None
        return self.losses

    def one_step(self, step_fn: Callable[[int], Tensor | float]) -> float:
        """Step `self.step` (see `run`), without hooks or the progress bar; returns its loss."""
        if self.schedule is not None:
            # lr_k: warm-up, then cosine decay
            self.opt.set_lr(self.schedule(self.step))
        out = step_fn(self.step)
        value = self.update(out) if isinstance(out, Tensor) else float(out)
        self.step += 1
        self.losses.append(value)
        return value

    def write(self, line: str) -> None:
        """Print a line above the progress bar (or plainly, outside `run`)."""
        if self._bar is not None and self.progress:
            self._bar.write(line)
        else:
            print(line)

    # -- resuming ---------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON-able state): the optimizer's moments and the EMA as arrays; the step,
        the losses, the optimizer's scalars and every generator's state as JSON."""
        opt_arrays, opt_meta = self.opt.state_dict()
        arrays = {f"opt.{k}": v for k, v in opt_arrays.items()}
        state: dict[str, Any] = {
            "step": self.step,
            "losses": list(self.losses),
            "optimizer": opt_meta,
            "rng": _rng.get_state(),
            "generators": {k: g.bit_generator.state for k, g in self.generators.items()},
        }
        if self.ema is not None:
            arrays.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            state["ema_updates"] = self.ema.updates
        return arrays, state

    def load_state_dict(self, arrays: dict[str, Any], state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (the model's weights are the trainer's to load).
        Raises ValueError naming what is missing or does not fit."""
        try:
            step, losses = int(state["step"]), [float(x) for x in state["losses"]]
            opt_meta, rng_state = state["optimizer"], state["rng"]
            gens = state.get("generators", {})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the trainer state is incomplete or malformed ({e!r})") from None
        if not 0 <= step <= max(self.steps, step) or len(losses) != step:
            raise ValueError(
                f"the trainer state is inconsistent: step {step} with {len(losses)} losses"
            )
        if set(gens) != set(self.generators):
            raise ValueError(
                f"the trainer state has generators {sorted(gens)}, the trainer {sorted(self.generators)}"
            )
        opt_arrays = {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}
        try:
            self.opt.load_state_dict(opt_arrays, opt_meta)
            if self.ema is not None:
                ema = {k[4:]: v for k, v in arrays.items() if k.startswith("ema.")}
                self.ema.load_state_dict(ema, state["ema_updates"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"the trainer state does not fit the optimizer or the EMA ({e})"
            ) from None
        try:
            _rng.set_state(rng_state)
            for k, g in self.generators.items():
                g.bit_generator.state = gens[k]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"the trainer state's random generators are malformed ({e})") from None
        self.step, self.losses = step, losses
