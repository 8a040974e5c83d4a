"""A sweep's worker process: it ends with the sweep that started it. Light on purpose: the command line arms it
before importing anything heavy."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PARENT_ENV = "SUPERMASK_PARENT_PID"  # set for a worker: the pid of the process it must not outlive


def die_with_parent() -> None:
    """In a worker (PARENT_ENV set): end this process when its parent ends, even by `kill -9`, so no orphan keeps
    training into a cell after its sweep is gone (a restarted sweep would start it again beside it).

    Linux: the kernel's parent-death signal (prctl PR_SET_PDEATHSIG, SIGKILL; a run's files are written
    atomically, so a kill at any point leaves its last checkpoint); elsewhere a thread polling the parent's pid.
    """
    parent = os.environ.pop(PARENT_ENV, "")  # not passed on: it names this process's parent only
    if not parent.isdigit():
        return
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:
        def watch() -> None:
            while os.getppid() == int(parent):
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != int(parent):  # the parent ended before the signal was armed
        os._exit(1)
