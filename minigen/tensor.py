"""Tensor: an ndarray that remembers how it was made, and reverse-mode autodiff.

Each op (in `ops.py`, `shape_ops.py`, `functional.py`) computes its output array and
hands `node()` two things: the tensors it read (its *parents*) and a `backward`
closure that maps the gradient of the loss w.r.t. the output, dL/dy, to the
gradients w.r.t. each parent, dL/dx_i = dL/dy . dy/dx_i (the chain rule).

`Tensor.backward()` hands the graph to the backward engine (`autograd.py`), which sorts
it topologically (every node after the nodes it was computed from), walks it from the loss
back to the leaves, sums the gradients flowing into each node, and stores them in `.grad` of
the leaves (tensors created with `requires_grad=True`, such as parameters). The graph is
freed as it is walked, so memory does not grow across training steps. Whether ops record
the graph at all (`no_grad`), and the dtype new tensors get, are in `settings.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minigen import backend
from minigen.autograd import backprop

# no_grad and the dtype defaults live in settings.py; importable from here too, where the
# library has always imported them from (`from minigen.tensor import Tensor, no_grad`)
from minigen.settings import (
    default_dtype,
    enable_grad,
    get_default_dtype,
    is_grad_enabled,
    no_grad,
    set_default_dtype,
)

# settings.py's names listed again: this module re-exports them (see the import above)
__all__ = [
    "Tensor",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "get_default_dtype",
    "set_default_dtype",
    "default_dtype",
    "tensor",
    "node",
]

# ----------------------------------------------------------------------------- the Tensor


class Tensor:
    """An n-dimensional array with an optional gradient.

    Args:
        data: an array (NumPy or CuPy), a Python number or a nested list.
        dtype: the element type. Python numbers and *float* arrays get the
            default float dtype (float32) unless `dtype` says otherwise;
            integer and boolean arrays keep theirs (indices, targets, masks).
        requires_grad: whether `backward()` should compute `.grad` for it.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_retain", "name", "__weakref__")
    __array_priority__ = 1000.0  # `ndarray + Tensor` calls Tensor.__radd__

    def __init__(self, data: Any, dtype: Any = None, requires_grad: bool = False) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if dtype is not None:
            dtype = np.dtype(dtype)
        # NumPy arrays, lists and numbers go to the current backend (onto the GPU with
        # "cupy"); an array of another library (a CuPy array) stays where it is
        device_array = hasattr(data, "dtype") and not isinstance(data, np.ndarray | np.generic)
        xp = backend.array_module(data) if device_array else backend.xp
        arr = xp.asarray(data)
        if dtype is None and arr.dtype.kind == "f" and arr.dtype != get_default_dtype():
            dtype = get_default_dtype()
        elif dtype is None and arr.dtype.kind in "iu" and not hasattr(data, "dtype"):
            dtype = np.dtype(np.int64)  # Python ints become int64 on every platform
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        if requires_grad and arr.dtype.kind != "f":
            raise ValueError(f"only float tensors can require grad, got dtype {arr.dtype}")
        self.data = arr
        self.grad: Any = None
        self.requires_grad = requires_grad
        self._ctx: Any = None  # (backward_fn, parents) for a computed tensor, None for a leaf
        self._retain = False
        self.name: str | None = None

    # -- basic attributes -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (a copy when it lives on the GPU)."""
        return backend.to_numpy(self.data)

    def item(self) -> float | int | bool:
        return self.data.item()

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def detach(self) -> Tensor:
        """The same data, cut from the graph (no gradient flows through it)."""
        return _wrap(self.data)

    def retain_grad(self) -> Tensor:
        """Keep `.grad` on this non-leaf tensor after backward (for inspection)."""
        self._retain = True
        return self

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and self.data.dtype.kind != "f":
            raise ValueError(f"only float tensors can require grad, got dtype {self.dtype}")
        self.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        self.grad = None

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), precision=4, separator=", ", threshold=20)
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self.dtype != get_default_dtype():
            extra = f", dtype={self.dtype}" + extra
        return f"Tensor({body}{extra})"

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.data)

    def __int__(self) -> int:
        return int(self.data)

    def __hash__(self) -> int:
        return id(self)

    # -- reverse-mode autodiff --------------------------------------------------------------
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into `.grad` of every leaf that requires grad.

        Args:
            grad: dL/d(self), needed when `self` is not a scalar.
            retain_graph: keep the graph so backward can be called through it again.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() called on a tensor that does not require grad "
                "(no input required grad, or it was computed under no_grad())"
            )
        xp = backend.array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar, but this tensor has shape "
                    f"{self.shape}; reduce it first (e.g. .sum()) or pass grad= of that shape"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(
                    f"backward(): grad has shape {grad.shape} but the tensor has shape {self.shape}"
                )

        backprop(self, grad, retain_graph)

    # -- operators and methods: a + b, a @ b, a[i], a.sum(), a.reshape() ---------------------
    # Each is an op of ops.py or shape_ops.py, set on this class at the end of that module,
    # beside its definition (`Tensor.__add__ = add`): the ops build Tensors, so this module
    # does not import them back, and the import graph has no cycle. `import minigen` (which
    # any `import minigen.<module>` runs first) imports both, so every Tensor has them.

    # comparisons give boolean tensors, outside the graph
    def __lt__(self, o: Any) -> Tensor:
        return _wrap(self.data < _raw(o))

    def __le__(self, o: Any) -> Tensor:
        return _wrap(self.data <= _raw(o))

    def __gt__(self, o: Any) -> Tensor:
        return _wrap(self.data > _raw(o))

    def __ge__(self, o: Any) -> Tensor:
        return _wrap(self.data >= _raw(o))

    # -- methods that are not ops (no gradient flows through them) -------------------------
    def argmax(self, axis: int | None = None) -> Tensor:
        return _wrap(self.data.argmax(axis=axis))


# ----------------------------------------------------------------------------- graph helpers


def _wrap(data: Any) -> Tensor:
    """A leaf tensor around an existing array, with no checks (internal fast path)."""
    t = Tensor.__new__(Tensor)
    t.data, t.grad, t.requires_grad = data, None, False
    t._ctx, t._retain, t.name = None, False, None
    return t


def _raw(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def node(data: Any, parents: tuple[Tensor, ...], backward: Callable[[Any], tuple]) -> Tensor:
    """Wrap an op's output; record (backward, parents) if any parent needs a gradient.

    `backward(g)` receives dL/d(output) and returns one gradient (or None) per parent,
    each with that parent's shape.
    """
    t = _wrap(data)
    if is_grad_enabled():
        for p in parents:
            if p.requires_grad:
                t.requires_grad = True
                t._ctx = (backward, parents)
                break
    return t


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """Create a tensor (same rules as `Tensor(...)`)."""
    return Tensor(data, dtype=dtype, requires_grad=requires_grad)
