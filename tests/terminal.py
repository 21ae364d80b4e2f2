"""A real pseudo-terminal with a screen emulator (pyte), to drive a terminal UI
as a user would: start it, read the screen, press keys."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from typing import Callable

import pyte

from helpers import DEADLINE


class Terminal:
    def __init__(self, args: list[str], columns: int = 120, lines: int = 36) -> None:
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns), LINES=str(lines))
        self.proc = subprocess.Popen([sys.executable, *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.master = master

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, check: Callable[[str], bool], timeout: float = DEADLINE) -> str:
        """Read output until ``check(screen text)`` holds; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while not check(self.text()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the screen never showed what was expected:\n{self.text()}")
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    self.stream.feed(os.read(self.master, 65536))
                except OSError:  # the program closed the terminal
                    raise AssertionError(
                        f"the program ended; last screen:\n{self.text()}") from None
        return self.text()

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self, timeout: float = DEADLINE) -> int | None:
        """Wait for the program to end, reading what it writes meanwhile (a
        program blocked on a full terminal would never end). Killed at the
        deadline: then None."""
        deadline = time.monotonic() + timeout
        try:
            while self.proc.poll() is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.proc.kill()
                    self.proc.wait()
                    return None
                if select.select([self.master], [], [], min(remaining, 0.1))[0]:
                    try:
                        self.stream.feed(os.read(self.master, 65536))
                    except OSError:  # the terminal closed: the program is ending
                        return self.proc.wait(max(0.0, deadline - time.monotonic()))
            return self.proc.returncode
        finally:
            os.close(self.master)
