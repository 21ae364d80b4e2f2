"""The rate limiter's owner: the process that keeps one limiter (registered
under its name, under a supervisor of its own that holds its control page:
``_shared_owner``)."""

from __future__ import annotations

import os
import time
from typing import Any

import otpy
from otpy import Pid
from otpy import lowlevel

from ._limiter_algorithms import Buckets
from ._limiter_shared import (C_ALLOWED, C_GEN, C_RETIRED, CONTROL_BYTES, Control, Retired,
                              TableOwner)
from ._shared_memory import create
from ._limiter_storage.redis import check_reachable
from ._shared_owner import Owner

#: algorithms whose buckets live in shared memory (the exact log needs the owner)
SHARED = ("fixed_window", "token_bucket")


class LimiterOwner(Owner):
    """The process holding one limiter's buckets (registered under its name).

    fixed_window and token_bucket: the buckets are in a shared table (see
    ``_limiter_shared``) that callers update themselves; the owner creates,
    grows and sweeps it, under the control page its supervisor holds (the
    lock). sliding_window: the owner holds the buckets and answers every
    hit. A replacement after a crash starts with no buckets: what was
    counted before is forgotten (see docs/breaker_and_limiter.md).
    """

    KIND = "limiter"

    @classmethod
    def page_bytes(cls, options: dict[str, Any]) -> int | None:
        shared = options["storage"] is None and options["algorithm"] in SHARED
        return CONTROL_BYTES if shared else None

    def init(self, name: str, options: dict[str, Any], supervisor: Pid,
             control_ref: tuple[int, int, int] | None) -> None:
        otpy.trap_exit(True)
        self.name = name
        self.options = options
        self.supervisor = supervisor
        self.control_ref = control_ref
        self.sweeps = 0
        self.log = lowlevel.logger(limiter=name)
        self.buckets: Buckets | None = None
        self.tables: TableOwner | None = None
        if control_ref is not None:
            control = Control(control_ref[0], control_ref[1])
            self.tables = TableOwner(control, options["algorithm"])
            with control:
                control.words[C_RETIRED] = 0
                self.tables.rebuild(time.time_ns())
        elif options["storage"] is None:
            self.buckets = Buckets(options["algorithm"])
            # its own counts page (a replacement counts afresh, as its buckets start afresh)
            self.counts_fd, self.counts = create(f"otpy-limiter-counts:{name}", 16)
        else:
            check_reachable(name, options)
            lowlevel.annotate(otpy.self(), otpy_limiter=name)
            return
        self._annotate_counts()
        self._arm_sweep()

    def _annotate_counts(self) -> None:
        """Where otpy.metrics finds the hits counted (allowed, denied): the
        control page's words, or the owner's own counts page."""
        if self.control_ref is not None:
            where: dict[str, Any] = dict(otpy_limiter_holder=self.control_ref[0],
                                         otpy_limiter_memfd=f"otpy-limiter:{self.name}",
                                         otpy_limiter_at=C_ALLOWED)
        else:
            where = dict(otpy_limiter_holder=os.getpid(),
                         otpy_limiter_memfd=f"otpy-limiter-counts:{self.name}",
                         otpy_limiter_at=0)
        lowlevel.annotate(otpy.self(), otpy_limiter=self.name, **where)

    # ---- operations (lowlevel.dispatch) ----------------------------------------------------

    def _op_attach(self) -> tuple:
        """How a handle reaches the buckets: ("shared", control page,
        algorithm), ("call",) or ("redis", url, algorithm)."""
        if self.tables is not None:
            return ("shared", self.control_ref, self.options["algorithm"])
        if self.buckets is not None:
            return ("call",)
        return ("redis", self.options["storage"], self.options["algorithm"])

    def _op_grow(self, gen: int) -> None:
        if self.tables is not None:
            with self.tables.control:
                if self.tables.control.words[C_GEN] == gen:  # not grown since asked
                    self.tables.rebuild(time.time_ns(), grow=True)

    def _op_hit(self, key: Any, limit: int, window_ns: int, cost: int, count: bool) -> tuple:
        if self.buckets is None:
            raise Retired()  # a new limiter of that name, not in this mode: attach again
        decision = tuple(self.buckets.hit(key, limit, window_ns, cost, time.time_ns(), count))
        if count:
            self.counts.words[0 if decision[0] else 1] += 1
        return decision

    def _op_reset(self, key: Any) -> int:
        if self.buckets is None:
            raise Retired()
        return self.buckets.reset(key)

    def _op_stats(self) -> dict[str, Any]:
        buckets = keys = table_bytes = None
        if self.tables is not None:
            with self.tables.control:
                buckets, keys = self.tables.counts()
                table_bytes = self.tables.size()
        elif self.buckets is not None:
            buckets, keys = len(self.buckets), len(self.buckets.table)
        return {"algorithm": self.options["algorithm"],
                "storage": self.options["storage"] or "memory",
                "buckets": buckets, "keys": keys, "sweeps": self.sweeps,
                "table_bytes": table_bytes}

    # ---- sweeping --------------------------------------------------------------------------

    def handle_info(self, message: Any) -> Any:
        if message == ("$sweep",):
            self._arm_sweep()
            if self.tables is not None:
                with self.tables.control:
                    removed = self.tables.sweep(time.time_ns())
                if removed is None:
                    return None  # nothing can have expired yet: not a sweep
            elif self.buckets is not None:
                removed = self.buckets.sweep(time.time_ns())
            else:
                return None
            self.sweeps += 1
            if removed:
                self.log.debug("rate limiter buckets expired", removed=removed)
        return None

    def terminate(self, reason: Any) -> None:
        if self.tables is not None:
            # Callers that look next reconnect (to a replacement, if any);
            # the table's memory goes now.
            with self.tables.control:
                self.tables.control.words[C_RETIRED] = 1
                self.tables.close()

    def _arm_sweep(self) -> None:
        otpy.send_after(otpy.self(), ("$sweep",), self.options["cleanup_interval"])
