"""Noise schedules and the forward (noising) process of §7.2.

The diffusion process "gradually degrades any sample": starting from a data point
x_0 (normalised to mean 0, variance 1), each step adds a bit of white noise and
re-normalises the variance to 1,

    x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) eps,    eps ~ N(0, I),

so if Var(x_t) = 1 then Var(x_{t+1}) = (1 - beta) + beta = 1. Composing the steps
gives the closed form (Ho et al., 2020, Eq. 4), with alpha_t = 1 - beta_t and
abar_t = prod_{s <= t} alpha_s:

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,

and abar_T ~ 0, so x_T is (nearly) N(0, I): the importance of x_0 decays
exponentially. Given x_0, the step back is Gaussian too (Ho et al., Eqs. 6-7):

    q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, betatilde_t),
    betatilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t,
    c1_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t),
    c2_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t).

Indexing. Arrays have T entries indexed k = 0 .. T-1, and entry k is the book's
step k+1: betas[k] = beta_{k+1}, alphas_cumprod[k] = abar_{k+1}. A *timestep* k
names the sample after k+1 noising steps, so `add_noise(x0, eps, k)` has the law of
`forward_step` applied for k' = 0, 1, ..., k. This is the convention of diffusers
(and of most code), kept so timesteps and arrays line up with it.

Schedules: "linear" betas from 1e-4 to 0.02 (Ho et al., 2020) and "cosine"
(Nichol & Dhariwal, 2021, abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas
clipped at 0.999). Every array is float64 and read-only.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from minigen import backend
from minigen import rng as _rng

__all__ = [
    "MAX_TIMESTEPS", "linear_betas", "cosine_betas", "posterior_variance", "NoiseSchedule",
    "SCHEDULES",
]  # fmt: skip

# the longest chain a schedule is made for: every array is (T,) float64, so T = 1e10 would ask
# for 74 GiB (a config read from a file or a flag is refused in one line instead)
MAX_TIMESTEPS = 100_000


def linear_betas(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Betas evenly spaced from `beta_start` to `beta_end` (Ho et al., 2020)."""
    _check_num_timesteps(num_train_timesteps)
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)  # (T,)


def cosine_betas(
    num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
    """The cosine schedule (Nichol & Dhariwal, 2021): abar follows a squared cosine."""
    _check_num_timesteps(num_train_timesteps)
    T = num_train_timesteps
    u = np.arange(T + 1, dtype=np.float64) / T  # (T+1,) the times 0, 1/T, ..., 1
    # abar(u) = cos^2(((u + s) / (1 + s)) pi / 2), up to the factor abar(0) that cancels below
    f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # (T+1,)
    # beta_t = min(1 - abar_t / abar_{t-1}, max_beta)
    return np.minimum(1 - f[1:] / f[:-1], max_beta)  # (T,)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "squaredcos_cap_v2": cosine_betas}


def posterior_variance(abar_t: Any, abar_prev: Any) -> Any:
    """betatilde: the variance of q(x_prev | x_t, x_0) between two timesteps (any stride).

    With abar_prev = abar_{t-1} this is Ho et al.'s Eq. 7; across a stride the step's
    beta is 1 - abar_t / abar_prev, which is what DDPM and DDIM samplers with fewer
    steps use.
    """
    # betatilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t,   beta_t = 1 - abar_t / abar_{t-1}
    return (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)


def _check_num_timesteps(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int | np.integer) or not 1 <= T <= MAX_TIMESTEPS:
        raise ValueError(
            f"the number of diffusion timesteps T must be an integer in 1 .. {MAX_TIMESTEPS:,}, "
            f"got {T!r}"
        )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class NoiseSchedule:
    """The betas of a diffusion process and every array derived from them (float64, (T,))."""

    def __init__(self, betas: Any) -> None:
        betas = np.array(betas, dtype=np.float64)  # a copy: (T,)
        if betas.ndim != 1:
            raise ValueError(f"betas must be a 1-D array, got shape {betas.shape}")
        _check_num_timesteps(len(betas))
        bad = np.flatnonzero(~((betas > 0) & (betas < 1)))  # NaN fails too
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"betas must lie in the open interval (0, 1); betas[{k}] = {betas[k]!r}"
                f" ({bad.size} offending value{'s' if bad.size > 1 else ''})"
            )
        self.betas = _frozen(betas)
        # alpha_t = 1 - beta_t
        self.alphas = _frozen(1.0 - betas)
        # abar_t = prod_{s <= t} alpha_s
        self.alphas_cumprod = _frozen(np.cumprod(self.alphas))
        # abar_{t-1}, with abar_0 = 1 (no noise yet) before the first step
        self.alphas_cumprod_prev = _frozen(np.concatenate([[1.0], self.alphas_cumprod[:-1]]))
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.posterior_variance = _frozen(posterior_variance(abar, abar_prev))
        # c1_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t)       (the weight of x_0)
        self.posterior_mean_coef1 = _frozen(np.sqrt(abar_prev) * betas / (1 - abar))
        # c2_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)   (the weight of x_t)
        self.posterior_mean_coef2 = _frozen(np.sqrt(self.alphas) * (1 - abar_prev) / (1 - abar))

    @classmethod
    def make(
        cls, name: str = "linear", num_train_timesteps: int = 1000, **kw: Any
    ) -> NoiseSchedule:
        """A named schedule: "linear" (kw: beta_start, beta_end) or "cosine" (kw: s, max_beta)."""
        if name not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
        return cls(SCHEDULES[name](num_train_timesteps, **kw))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    def __len__(self) -> int:
        return len(self.betas)

    def __repr__(self) -> str:
        b = self.betas
        return f"NoiseSchedule(T={len(b)}, betas from {b[0]:.3g} to {b[-1]:.3g})"

    # ------------------------------------------------------------------ indexing helpers

    def check_timestep(self, t: Any) -> Any:
        """`t` as an int (or an int array), checked to lie in 0 .. T-1."""
        T = len(self.betas)
        if isinstance(t, int | np.integer) and not isinstance(t, bool):
            t = operator.index(t)
            if not 0 <= t < T:
                raise ValueError(
                    f"timestep {t} is out of range: the schedule has T={T} (0 .. {T - 1})"
                )
            return t
        arr = backend.to_numpy(t)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"timesteps must be integers, got dtype {arr.dtype} ({t!r})")
        if arr.size and (arr.min() < 0 or arr.max() >= T):
            bad = arr[(arr < 0) | (arr >= T)].ravel()[0]
            raise ValueError(
                f"timestep {bad} is out of range: the schedule has T={T} (0 .. {T - 1})"
            )
        return arr

    def _at(self, values: np.ndarray, t: Any, like: Any) -> Any:
        """values[t] shaped to broadcast over `like`: a float, or (B, 1, ..., 1) per sample."""
        t = self.check_timestep(t)
        if isinstance(t, int):
            return float(values[t])
        shape = np.shape(like)
        if t.ndim > 1 or (t.ndim == 1 and (not shape or shape[0] != t.shape[0])):
            raise ValueError(
                f"per-sample timesteps must have shape (B,) for a batch of shape (B, ...):"
                f" got timesteps {t.shape} for samples {shape}"
            )
        xp = backend.array_module(like)
        v = values[t].reshape(t.shape + (1,) * (len(shape) - t.ndim))  # (B, 1, ..., 1)
        return xp.asarray(v)

    # ------------------------------------------------------------------ the forward process

    def forward_step(self, x_t: Any, noise: Any, t: Any) -> Any:
        """One step of the chain: x_t (t steps of noise) -> x_{t+1}, using betas[t]."""
        _check_same_shape(x_t, noise, "x_t", "noise")
        beta = self._at(self.betas, t, x_t)  # () or (B, 1, ...)
        xp = backend.array_module(x_t)
        # add a bit of white noise, re-normalise the variance to 1:
        # x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) eps,   beta_{t+1} = betas[t]
        out = xp.sqrt(1 - beta) * x_t + xp.sqrt(beta) * noise
        return _as_input_dtype(out, x_t, noise)

    def diffuse(
        self,
        x0: Any,
        num_steps: int | None = None,
        generator: np.random.Generator | None = None,
        return_all: bool = False,
    ) -> Any:
        """Run the chain step by step from x_0 for `num_steps` steps (default T).

        Returns x_{num_steps} (with the indexing above, the law of `add_noise(x0, eps,
        num_steps - 1)`), or with `return_all` the list [x_0, x_1, ..., x_{num_steps}].
        """
        T = len(self.betas)
        n = T if num_steps is None else num_steps
        if not 0 <= n <= T:
            raise ValueError(f"num_steps must lie in 0 .. T={T}, got {n}")
        gen = generator if generator is not None else _rng.generator()
        xp = backend.array_module(x0)
        x, path = x0, [x0]
        for t in range(n):
            eps = xp.asarray(gen.standard_normal(np.shape(x0), dtype=_float_dtype(x0)))
            x = self.forward_step(x, eps, t)
            if return_all:
                path.append(x)
        return path if return_all else x

    def add_noise(self, x0: Any, noise: Any, t: Any) -> Any:
        """The closed form: the sample at timestep t (an int, or one int per sample of axis 0)."""
        _check_same_shape(x0, noise, "x0", "noise")
        abar = self._at(self.alphas_cumprod, t, x0)  # () or (B, 1, ...)
        xp = backend.array_module(x0)
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   abar_t = alphas_cumprod[t]
        out = xp.sqrt(abar) * x0 + xp.sqrt(1 - abar) * noise
        return _as_input_dtype(out, x0, noise)

    def q_posterior(self, x0: Any, x_t: Any, t: Any) -> tuple[Any, Any]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (consecutive timesteps)."""
        _check_same_shape(x0, x_t, "x0", "x_t")
        c1 = self._at(self.posterior_mean_coef1, t, x0)
        c2 = self._at(self.posterior_mean_coef2, t, x0)
        var = self._at(self.posterior_variance, t, x0)
        # mutilde_t(x_t, x_0) = c1_t x_0 + c2_t x_t
        return c1 * x0 + c2 * x_t, var


def _check_same_shape(a: Any, b: Any, name_a: str, name_b: str) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {np.shape(a)} and {np.shape(b)}"
        )


def _float_dtype(x: Any) -> np.dtype:
    dt = np.dtype(getattr(x, "dtype", np.float64))
    return dt if dt in (np.float32, np.float64) else np.dtype(np.float64)


def _as_input_dtype(out: Any, *inputs: Any) -> Any:
    """Keep the inputs' floating dtype (float32 data stays float32; coefficients are float64)."""
    dt = np.result_type(*(_float_dtype(x) for x in inputs))
    return out.astype(dt, copy=False) if hasattr(out, "astype") else out
