"""Worker classes the Ray placement tests run on actors (importable there
through the placement's runtime_env: this folder is on their PYTHONPATH)."""

from __future__ import annotations

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
