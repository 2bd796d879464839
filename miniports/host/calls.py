"""Calling into the miniport: the one place that tells its answers from its faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

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
    try:
        return method(*args, **kwargs)
    except (StatusError, MiniportFault):
        raise
    except Exception as exc:
        raise MiniportFault(f"{what} raised") from exc


def call_miniport_hook(what: str, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call a miniport method that has no status to report (`service`, a sink's
    `request_service`, a stream's `close`): whatever it raises is a MiniportFault."""
    try:
        return method(*args, **kwargs)
    except MiniportFault:
        raise
    except Exception as exc:
        raise MiniportFault(f"{what} raised") from exc
