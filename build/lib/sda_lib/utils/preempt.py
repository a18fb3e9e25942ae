"""Stopping cleanly when a scheduler or a spot instance sends SIGTERM.

The long loops (adaptation steps, export chunks, recommender epochs) run inside `on_sigterm()`,
which turns SIGTERM into a flag read at the next step boundary: the loop writes its checkpoint and
raises `Preempted`, whose message says how to resume; the command-line tools then exit with
`sda_lib.utils.exits.PREEMPTED`. The runner passes the signal on to the notebook kernel it started
(which runs in a session of its own), so the stage in progress stops the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


class Preempted(RuntimeError):
    """The job stopped on SIGTERM after saving what it needs to resume."""


class _Flag:
    def __init__(self):
        self.received = False

    def __bool__(self) -> bool:
        return self.received


@contextlib.contextmanager
def on_sigterm(what: str, forward=None):
    """Yield a flag that becomes true on SIGTERM; `what` names the job in the log; `forward()`
    gives the process ids to send the signal on to. Outside the main thread (where Python cannot
    take signals) the flag stays false."""
    flag = _Flag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handle(signum, frame):
        if not flag.received:
            passing = ", passing it on to the running stage" if forward else ", after writing a checkpoint"
            log.warning(f"SIGTERM: {what} stops at the next step boundary{passing}")
        flag.received = True
        for pid in forward() if forward else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
