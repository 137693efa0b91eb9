"""The six softmax functions of the two GPU backends, written once.

`numba_cuda.py` and `cupy_kernels.py` launch the same two row kernels (forward: softmax or
log-softmax of scale x, with or without the causal mask; backward: the matching dx), each
in its own language, behind a launcher of one signature:

    forward(op, x, scale, t_queries, causal, log) -> y
    backward(op, y, dy, scale, log) -> dx

`softmax_family(forward, backward)` builds the public functions on top of them, with the
checks every backend makes (`_checks`), so each backend lists them in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _checks as ck


def softmax_family(forward: Callable[..., Any], backward: Callable[..., Any]) -> tuple:
    """(softmax_forward, softmax_backward, log_softmax_forward, log_softmax_backward,
    causal_softmax_forward, causal_softmax_backward) on the launchers of one backend."""

    def softmax_forward(x: Any) -> Any:
        """softmax over the last axis, one block per row."""
        ck.check_last_axis("softmax_forward", x)
        return forward("softmax_forward", x, 1.0, 1, causal=False, log=False)

    def softmax_backward(y: Any, dy: Any) -> Any:
        """dx = y * (dy - sum(dy * y)), one block per row."""
        return backward("softmax_backward", y, dy, 1.0, log=False)

    def log_softmax_forward(x: Any) -> Any:
        """log-softmax over the last axis, one block per row."""
        ck.check_last_axis("log_softmax_forward", x)
        return forward("log_softmax_forward", x, 1.0, 1, causal=False, log=True)

    def log_softmax_backward(y: Any, dy: Any) -> Any:
        """dx = dy - exp(y) * sum(dy), one block per row."""
        return backward("log_softmax_backward", y, dy, 1.0, log=True)

    def causal_softmax_forward(scores: Any, scale: float) -> Any:
        """Scale, causal mask (query i sees keys j <= i + S - T) and softmax, one block per row."""
        t, _ = ck.check_scores("causal_softmax_forward", scores)
        return forward("causal_softmax_forward", scores, scale, t, causal=True, log=False)

    def causal_softmax_backward(y: Any, dy: Any, scale: float) -> Any:
        """d scores = scale * y * (dy - sum(dy * y)); masked entries (y = 0) get 0."""
        ck.check_scores("causal_softmax_backward", y)
        return backward("causal_softmax_backward", y, dy, scale, log=False)

    return (
        softmax_forward, softmax_backward, log_softmax_forward, log_softmax_backward,
        causal_softmax_forward, causal_softmax_backward,
    )  # fmt: skip
