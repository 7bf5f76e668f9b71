"""Local worker processes that die with the App.

A ``kill -9`` of the App (or a SIGTERM from ``scancel``, or a closed terminal) gives it no
chance to stop the processes of its pool: ``concurrent.futures`` workers would wait for work
for ever, holding memory and CPUs. A worker process that calls :func:`die_with_parent` watches
its parent and kills itself as soon as it has been orphaned (its parent process changed).

:func:`die_with_parent` is what any process pool of the App runs first in its workers (see
:mod:`masker_wf.app.parallel`).
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["die_with_parent"]

#: Seconds between two looks at the parent process.
WATCH_SECONDS = 0.2


def die_with_parent(interval: float = WATCH_SECONDS) -> None:
    """Kill this process once its parent is gone (call it first thing in a worker).

    A daemon thread compares ``os.getppid()`` with the parent at the time of the call:
    an orphan is re-parented (to init or a subreaper), and then sends itself SIGKILL.
    Polling, rather than ``PR_SET_PDEATHSIG``, because the latter fires when the *thread*
    that started the process ends, not the process.
    """
    parent = os.getppid()

    def watch():
        while not stop.wait(interval):
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    stop = threading.Event()
    threading.Thread(target=watch, name="masker-wf-parent-watch", daemon=True).start()
