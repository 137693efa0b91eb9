"""Modules: parameters grouped with the function that uses them.

A `Module` finds its parameters and sub-modules by looking at its own attributes
(in the order they were set), so a model is plain Python:

    class MLP(nn.Module):
        def __init__(self):
            self.fc1 = nn.Linear(2, 64)
            self.fc2 = nn.Linear(64, 2)
        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

Lists of modules go in a `ModuleList` (plain lists are not searched).
Linear weights are stored (in, out), so a layer computes y = x W + b.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from minigen import backend, rng
from minigen import functional as F
from minigen.tensor import Tensor, get_default_dtype

__all__ = [
    "Parameter", "Module", "ModuleList", "Sequential", "Linear", "Embedding", "LayerNorm",
    "Dropout", "Conv2d", "GroupNorm", "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid",
]  # fmt: skip


class Parameter(Tensor):
    """A tensor that is a learnable weight of a module (it requires grad)."""

    __slots__ = ()

    def __init__(self, data: Any, dtype: Any = None) -> None:
        super().__init__(data, dtype=dtype, requires_grad=True)


def _uniform(shape: tuple[int, ...], bound: float) -> Parameter:
    g = rng.generator()
    return Parameter(backend.xp.asarray(g.uniform(-bound, bound, shape)), get_default_dtype())


class Module:
    """Base class: subclasses set parameters/modules as attributes and define `forward`."""

    training: bool = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # -- discovery ---------------------------------------------------------------------------
    def _children(self) -> Iterator[tuple[str, Any]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter | Module):
                yield name, value

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix.rstrip("."), self
        for name, value in self._children():
            if isinstance(value, Module):
                yield from value.named_modules(f"{prefix}{name}.")

    def modules(self) -> Iterator[Module]:
        return (m for _, m in self.named_modules())

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(name, parameter) pairs; a shared (tied) parameter is listed once, first name wins."""
        seen: set[int] = set()
        for mod_name, mod in self.named_modules():
            for name, value in mod._children():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- modes and gradients -----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype: Any) -> Module:
        """Convert every parameter to `dtype` in place (e.g. float64 for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        return self

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """name -> a NumPy copy of each parameter."""
        return {name: backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays into the parameters, in place; names and shapes must match.

        Raises a ValueError naming the missing/unexpected keys or the key whose shape
        differs (with both shapes); nothing is changed when anything does not match.
        """
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError(f"load_state_dict: {'; '.join(parts)}")
        for k, p in params.items():
            if k in state and tuple(np.shape(state[k])) != p.shape:
                raise ValueError(
                    f"load_state_dict: key {k!r} has shape {tuple(np.shape(state[k]))} in the "
                    f"state but {p.shape} in the model"
                )
        for k, p in params.items():
            if k in state:
                p.data[...] = backend.array_module(p.data).asarray(state[k], dtype=p.dtype)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        subs = [(n, v) for n, v in self._children() if isinstance(v, Module)]
        for name, m in subs:
            lines.append("  (" + name + "): " + repr(m).replace("\n", "\n  "))
        return lines[0] + ")" if not subs else "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules whose parameters are found like attributes' ("0", "1", ...)."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        self._items: list[Module] = list(modules)

    def _children(self) -> Iterator[tuple[str, Any]]:
        return ((str(i), m) for i, m in enumerate(self._items))

    def append(self, m: Module) -> None:
        self._items.append(m)

    def __getitem__(self, i: int) -> Module:
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)


class Sequential(ModuleList):
    """Apply modules one after the other."""

    def __init__(self, *modules: Module) -> None:
        super().__init__(modules)

    def forward(self, x: Any) -> Any:
        for m in self._items:
            x = m(x)
        return x


class Linear(Module):
    """y = x W + b, W of shape (in, out); PyTorch's init: U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        bound = 1 / math.sqrt(in_features)
        self.weight = _uniform((in_features, out_features), bound)
        self.bias = _uniform((out_features,), bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        n_in, n_out = self.weight.shape
        return f"{n_in}, {n_out}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of `num` vectors of size `dim`, looked up by integer id; init N(0, 1)."""

    def __init__(self, num: int, dim: int) -> None:
        self.weight = Parameter(rng.randn(num, dim))

    def forward(self, idx: Any) -> Tensor:
        return F.embedding(idx, self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        xp, dt = backend.xp, get_default_dtype()
        self.weight = Parameter(xp.ones(dim, dtype=dt))
        self.bias = Parameter(xp.zeros(dim, dtype=dt)) if bias else None
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Conv2d(Module):
    """(N, C, H, W) -> (N, O, Ho, Wo); init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int,
        stride: int = 1, padding: int = 0, bias: bool = True,
    ) -> None:  # fmt: skip
        bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = _uniform((out_channels, in_channels, kernel_size, kernel_size), bound)
        self.bias = _uniform((out_channels,), bound) if bias else None
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        o, c, k, _ = self.weight.shape
        return f"{c}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class GroupNorm(Module):
    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups}")
        xp, dt = backend.xp, get_default_dtype()
        self.num_groups, self.eps = num_groups, eps
        self.weight = Parameter(xp.ones(num_channels, dtype=dt))
        self.bias = Parameter(xp.zeros(num_channels, dtype=dt))

    @classmethod
    def for_channels(cls, num_channels: int, max_groups: int = 8) -> GroupNorm:
        """GroupNorm over the largest number of groups <= max_groups that divides the channels
        (the U-Nets' choice: 8 groups where the width allows)."""
        g = next(g for g in range(min(max_groups, num_channels), 0, -1) if num_channels % g == 0)
        return cls(g, num_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.weight.shape[0]}"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class GELU(Module):
    def __init__(self, approximate: str = "none") -> None:
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)


class SiLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)
