"""Worker classes the Ray placement tests run on actors (importable there
through the placement's runtime_env: this folder is on their PYTHONPATH)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from otpy_pool import Worker, command


class Where(Worker):
    """Commands that say where they run, and session state to replay."""

    def init(self, tag: str = "w") -> None:
        if tag == "refuse":
            raise RuntimeError("init refused")
        self.tag = tag
        self.init_thread = threading.get_ident()
        self.sick = False

    def health_check(self) -> bool:
        return not self.sick

    @command
    def where(self, session: Any) -> tuple:
        """(actor process id, Ray node id, Ray actor id)"""
        import ray

        context = ray.get_runtime_context()
        return os.getpid(), context.get_node_id(), context.get_actor_id()

    @command
    def sicken(self, session: Any) -> None:
        self.sick = True

    @command(replay=True)
    def put(self, session: Any, key: Any, value: Any) -> Any:
        session.state[key] = value
        return key

    @command
    def get(self, session: Any, key: Any) -> Any:
        return session.state.get(key)

    @command
    def keys(self, session: Any) -> list:
        return sorted(session.state)

    @command
    def hang(self, session: Any, ready_file: str) -> None:
        with open(ready_file, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)

    @command
    def fail(self, session: Any, text: str) -> None:
        raise ValueError(text)

    @command
    def same_thread(self, session: Any) -> bool:
        return threading.get_ident() == self.init_thread


class Napper(Worker):
    """An async Worker: commands that meet (a barrier only a worker running
    that many at once passes), one that waits to be cancelled, session state."""

    cancel_grace = 0.5

    async def init(self) -> None:
        self.rounds: dict[Any, list] = {}  # round -> [commands inside, all there]
        self.cancelled = 0

    @command
    async def meet(self, session: Any, round: Any, n: int) -> int:
        """Returns once ``n`` commands of ``round`` are inside at once (or
        fails after 30 s): the actor's process id."""
        inside = self.rounds.setdefault(round, [0, asyncio.Event()])
        inside[0] += 1
        if inside[0] >= n:
            inside[1].set()
        await asyncio.wait_for(inside[1].wait(), 30)
        return os.getpid()

    @command
    async def wait_to_be_cancelled(self, session: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    @command
    async def ignore_cancel(self, session: Any, ready_file: str) -> None:
        with open(ready_file, "w") as f:
            f.write(str(os.getpid()))
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # never ends: its grace passes, the worker is killed

    @command
    async def cancelled_count(self, session: Any) -> int:
        return self.cancelled

    @command
    async def hang(self, session: Any, ready_file: str) -> None:
        with open(ready_file, "w") as f:
            f.write(str(os.getpid()))
        await asyncio.sleep(3600)

    @command
    async def actor(self, session: Any) -> str:
        import ray

        return ray.get_runtime_context().get_actor_id()

    @command(replay=True)
    async def put(self, session: Any, key: Any, value: Any) -> Any:
        session.state[key] = value
        return key

    @command
    def get(self, session: Any, key: Any) -> Any:  # a plain def beside them runs too
        return session.state.get(key)
