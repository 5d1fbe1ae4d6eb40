"""Ctrl-C during a CLI flow run, raised only where it is safe.

A ``KeyboardInterrupt`` that lands inside Prefect's own bookkeeping (creating a task run,
proposing a state) is replaced there by a secondary error ("Task run is not set") with a
logged traceback, and the run no longer reads as interrupted. So while a CLI flow runs
(``deferred_interrupts``), a Ctrl-C is raised at once only inside a semoe task body
(``interruptible``: model and index work, where the engine handles it as a crash); elsewhere
it is recorded and raised at the next safe point: the start of the next task body, a commit
(``check``), or after ``FALLBACK_S`` at the latest. A second Ctrl-C is always raised at once.
Outside a CLI flow run nothing changes.
"""

from __future__ import annotations

import _thread
import functools
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)

FALLBACK_S = 3.0

_requested = threading.Event()
_deferring = False
_in_body = 0


def _raise_soon() -> None:
    if _deferring:
        _thread.interrupt_main()  # calls _handler again, which now raises


def _handler(signum, frame) -> None:
    if _requested.is_set() or not _deferring or _in_body:
        _requested.set()
        raise KeyboardInterrupt
    _requested.set()
    timer = threading.Timer(FALLBACK_S, _raise_soon)
    timer.daemon = True
    timer.start()


def requested() -> bool:
    """Whether a Ctrl-C arrived during the current (or last) deferred block."""
    return _requested.is_set()


def check() -> None:
    """A safe point: inside a deferred block, raise the Ctrl-C recorded since it began."""
    if _deferring and _requested.is_set():
        raise KeyboardInterrupt


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Defer Ctrl-C to safe points for the duration of the block (main thread only)."""
    global _deferring
    _requested.clear()
    previous = signal.signal(signal.SIGINT, _handler)
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        signal.signal(signal.SIGINT, previous)


def interruptible(fn: F) -> F:
    """Mark a task body where Ctrl-C is raised at once (and raise one recorded before it)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _in_body
        check()
        _in_body += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _in_body -= 1

    return wrapper  # type: ignore[return-value]
