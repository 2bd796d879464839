"""Calling into the miniport: the one place that tells its answers from its faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from ipc import trace
from ipc.status import StatusError

__all__ = ["MiniportFault", "call_miniport", "call_miniport_hook"]

P = ParamSpec("P")
T = TypeVar("T")


class MiniportFault(Exception):
    """The miniport broke its contract or raised out of a callback.

    The host stops and exits with `EXIT_MINIPORT_FAULT`; the kernel then treats the
    device as surprise-removed. `__cause__` is what the miniport raised, if anything.
    """


def call_miniport(what: str, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call a miniport method that reports failure with a StatusError.

    A StatusError is the miniport's answer and goes to the caller unchanged (to
    become an error reply or a stream error); anything else it raises is a
    MiniportFault (a MiniportFault from a nested call passes as it is).
    """
    if trace.ON:
        return _traced(what, False, method, *args, **kwargs)
    try:
        return method(*args, **kwargs)
    except (StatusError, MiniportFault):
        raise
    except Exception as exc:
        raise MiniportFault(f"{what} raised") from exc


def call_miniport_hook(what: str, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call a miniport method that has no status to report (`service`, a sink's
    `request_service`, a stream's `close`): whatever it raises is a MiniportFault."""
    if trace.ON:
        return _traced(what, True, method, *args, **kwargs)
    try:
        return method(*args, **kwargs)
    except MiniportFault:
        raise
    except Exception as exc:
        raise MiniportFault(f"{what} raised") from exc


def _traced(
    what: str, hook: bool, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """A miniport call as a trace slice, with its result (or status, or fault);
    `hook`: a StatusError is a fault too, as in `call_miniport_hook`."""
    start = trace.now()
    outcome: object = None
    try:
        result = method(*args, **kwargs)
    except StatusError as exc:
        if hook:
            outcome = "fault"
            raise MiniportFault(f"{what} raised") from exc
        outcome = exc.status.name if hasattr(exc.status, "name") else exc.status
        raise
    except MiniportFault:
        outcome = "fault"
        raise
    except Exception as exc:
        outcome = "fault"
        raise MiniportFault(f"{what} raised") from exc
    else:
        outcome = _summary(result)
        return result
    finally:
        trace.complete(what, "miniport", start, {"result": outcome})


def _summary(result: object) -> object:
    """What a trace shows of a result: a number as it is, bytes as their count."""
    if result is None or isinstance(result, (bool, int, float, str)):
        return result
    if isinstance(result, (bytes, bytearray, memoryview)):
        return f"{len(result)} bytes"
    return type(result).__name__
