"""The backward engine: reverse-mode autodiff over the graph that `tensor.node` records.

Every computed tensor y holds `_ctx = (backward, parents)`. From a root L (the loss) and
dL/dL, the engine visits the tensors in reverse topological order (each after every tensor
computed from it), so that when it reaches y the gradient dL/dy is complete, summed over
every use of y; then the chain rule hands each parent its share,

    dL/dx_i += dL/dy . dy/dx_i        (the op's `backward(dL/dy)`, one term per parent),

and leaves (tensors created with requires_grad=True, such as parameters) accumulate theirs
into `.grad`. The graph is freed as it is walked (`FREED`), so memory does not grow across
training steps; `retain_graph=True` keeps it for a second walk.
"""

from __future__ import annotations

from typing import Any

from minigen import backend

__all__ = ["FREED", "backprop", "toposort", "accumulate"]

# A marker for a node whose graph was already walked by backward() and freed.
FREED = ("freed",)


def backprop(root: Any, grad: Any, retain_graph: bool = False) -> None:
    """Accumulate dL/d(leaf) into `.grad` of every leaf that requires grad, given the array
    grad = dL/d(root) (`Tensor.backward` checks it)."""
    grads: dict[int, Any] = {id(root): grad}  # dL/d(node), summed over the node's uses
    for t in toposort(root):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        ctx = t._ctx
        if ctx is None or t._retain:  # a leaf, or a node whose grad we keep
            accumulate(t, g)
            if ctx is None:
                continue
        if ctx is FREED:
            raise RuntimeError(
                "backward() through a graph that was already freed: an earlier backward() "
                "walked it; call the first backward(retain_graph=True) to walk it twice"
            )
        backward_fn, parents = ctx
        # the chain rule: dL/dx_i = dL/dy . dy/dx_i, one term per parent
        for p, gp in zip(parents, backward_fn(g), strict=True):
            if gp is None or not p.requires_grad:
                continue
            k = id(p)
            prev = grads.get(k)
            grads[k] = gp if prev is None else prev + gp
        if not retain_graph:
            t._ctx = FREED


def toposort(root: Any) -> list[Any]:
    """Nodes reachable from `root` that require grad, root first, leaves last."""
    order: list[Any] = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:  # iterative depth-first search: no recursion limit on deep graphs
        t, children_done = stack.pop()
        if children_done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        ctx = t._ctx
        if ctx is not None and ctx is not FREED:
            for p in ctx[1]:
                if p.requires_grad and id(p) not in seen:
                    stack.append((p, False))
    order.reverse()
    return order


def accumulate(t: Any, g: Any) -> None:
    """t.grad += g, in place when t.grad exists (so optimizers may own the buffer)."""
    if g.shape != t.data.shape:  # a broadcast view from a reduction's backward
        g = backend.array_module(g).broadcast_to(g, t.data.shape)
    if t.grad is None:
        t.grad = g.astype(t.data.dtype, copy=True)  # a copy: g may be shared with other nodes
    else:
        t.grad += g
