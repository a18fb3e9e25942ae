"""Exit statuses of the command-line tools (`sda_lib.workbench.run`, `.data`, `.adapt`, `.export`), so a
job script or a scheduler can tell a usage error from a busy folder from a preemption to retry."""

from __future__ import annotations

import functools
import sys

from .locks import LockError
from .preempt import Preempted
from .registry import PluginError

USAGE = 2  # a bad option or parameter: nothing was run
BUSY = 73  # another live process holds the output folder (sda_lib.utils.locks)
PREEMPTED = 75  # stopped on SIGTERM after a checkpoint: the same command resumes (sda_lib.utils.preempt)


def command(main):
    """Turn a refused lock and a preemption into their exit statuses, and a plugin that fails to
    import into status 1, with the message on stderr."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except LockError as err:
            print(f"error: {err}", file=sys.stderr)
            return BUSY
        except Preempted as err:
            print(f"stopped: {err}", file=sys.stderr)
            return PREEMPTED
        except PluginError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    return wrapped
