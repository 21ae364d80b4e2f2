"""Processes an otpy process starts on its own (not otpy processes): one of
each kind a user's code makes, for the "no orphans, one level down" tests."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess

import psutil

KINDS = ("popen", "new_session", "fork", "mp_fork", "mp_spawn", "grandchild")

# A shell that starts a child of its own and waits: when the shell is
# killed, its child is orphaned (handed to the zygote, the subreaper).
_SHELL = "sleep 300 & echo $! ; wait"


def _pause() -> None:
    while True:
        signal.pause()


def start(kinds: tuple[str, ...] = KINDS) -> list[int]:
    """Start one process of each kind; the OS pids of all this process's
    descendants then, in the order started (the shell's child after the
    shell; helpers such as multiprocessing's resource tracker at the end)."""
    started = []
    for kind in kinds:
        if kind == "popen":
            started.append(subprocess.Popen(["sleep", "300"]).pid)
        elif kind == "new_session":  # leaves the process group
            started.append(subprocess.Popen(["sleep", "300"], start_new_session=True).pid)
        elif kind == "fork":
            child = os.fork()
            if child == 0:
                try:
                    _pause()
                finally:
                    os._exit(0)
            started.append(child)
        elif kind in ("mp_fork", "mp_spawn"):
            context = multiprocessing.get_context(kind[3:])
            process = context.Process(target=_pause, daemon=False)
            process.start()
            started.append(process.pid)
        elif kind == "grandchild":
            shell = subprocess.Popen(["sh", "-c", _SHELL], stdout=subprocess.PIPE, text=True)
            started += [shell.pid, int(shell.stdout.readline())]
            shell.stdout.close()
        else:
            raise ValueError(f"unknown kind {kind!r}")
    others = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in started]
    return started + others
