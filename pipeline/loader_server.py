"""Where DataLoader workers start: forked from a clean server process, never from the
training process. Forking a process whose other threads (the stall watchdog, a loader's
queue feeder, gloo's) touch the interpreter's thread list can deadlock the child inside
os.fork() on CPython 3.8-3.11 (python/cpython#112275; it hung a DDP test in CI here).

The server imports ``pipeline.data`` (and a script's main module) once, so a worker starts
in milliseconds, not seconds of importing torch again. As with any start method but fork, a
script of one's own that loads with workers needs the ``if __name__ == "__main__"`` guard.
This module imports nothing heavy, so a command can start the server before its own imports.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver

LOADER_START_METHOD = "forkserver"
SERVER_PRELOAD = ["__main__", "pipeline.data"]


def loader_context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context(LOADER_START_METHOD)
    context.set_forkserver_preload(SERVER_PRELOAD)  # read when the server starts
    return context


def start_loader_server() -> None:
    """Start the server now rather than at the first batch: its import of torch and
    Lightning (13 s on 2 cores) then runs beside the caller's own imports, not after them."""
    loader_context()
    forkserver.ensure_running()
