"""A second lane of a pipeline: one function in a process of its own, beside this one.

`rlhf all` trains the DPO policy in a lane while this process trains the reward model and PPO.
The lane ignores Ctrl-C (`minigen.parallel.start_ignoring_ctrl_c`): this process gets the
KeyboardInterrupt, stops the lane, and alone reports it.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable
from typing import Any

from minigen.parallel import start_ignoring_ctrl_c

__all__ = ["Lane"]


class _LaneTraceback(Exception):
    """The traceback of a lane's exception, as text (the cause of the exception re-raised)."""


class _Stopped(BaseException):
    """Raised in a lane by SIGTERM (`Lane.close`): its finally blocks run (a file being written
    is removed), then it ends without a word."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped


def _lane_main(fn: Callable[..., Any], args: tuple[Any, ...], conn: Any) -> None:
    """A lane's process: fn(*args), its value or its exception (and traceback) sent back;
    Ctrl-C ignored, SIGTERM a quiet stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    try:
        try:
            answer: tuple[str, Any, str] = ("ok", fn(*args), "")
        except _Stopped:
            raise
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            answer = ("error", e, traceback.format_exc())
        try:
            conn.send(answer)
        except _Stopped:
            raise
        except Exception as e:  # noqa: BLE001 - what does not pickle goes back as text
            what = "its value" if answer[0] == "ok" else f"its exception {answer[1]!r}"
            conn.send(("error", RuntimeError(f"{what} could not be sent back ({e})"), answer[2]))
    except _Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    finally:
        conn.close()


class Lane:
    """fn(*args) in a process of its own ("spawn": a fresh interpreter), beside this one.

        with Lane(train_dpo, run) as lane:
            ...                        # this process goes on with other work
            lane.result()              # fn's value; fn's exception is raised here

    The lane ignores Ctrl-C: this process gets the KeyboardInterrupt and, leaving the `with`
    block (or calling `close`), stops the lane at once. `fn` and `args` must be picklable.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked BLAS state
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_lane_main, args=(fn, args, child))
        self.name = getattr(fn, "__name__", "a lane")
        try:
            start_ignoring_ctrl_c(self._proc)
        finally:
            child.close()

    def result(self) -> Any:
        """Wait for fn to end; its value, or its exception raised here."""
        try:
            status, payload, text = self._conn.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(
                f"{self.name}: its process died (exit code {self._proc.exitcode})"
            ) from None
        self._proc.join()
        if status == "error":
            raise payload from (
                _LaneTraceback(f"in {self.name}'s process:\n{text}") if text else None
            )
        return payload

    def close(self) -> None:
        """Stop the lane now if it still runs (SIGTERM: its finally blocks run; then SIGKILL
        if it has not ended within 10 s)."""
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc.join()
        self._conn.close()

    def __enter__(self) -> Lane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
