"""The circuit breaker's owner and its shared page.

The owner (a GenServer registered under the breaker's name, under a
supervisor of the breaker's own: ``_shared_owner``) runs the state machine
(``_breaker_machine``), stamps time, arms the half-open timer, and publishes
the state into the page after every change. The page is held by the
supervisor, so it survives an owner SIGKILL: the replacement resumes from
the snapshot the owner keeps in it, and every mapping stays valid.
Handles (``_breaker``) read it and write only their own counter slot.
"""

from __future__ import annotations

import pickle
import struct
import time
from typing import Any, NamedTuple

import otpy
from otpy import Down, Pid
from otpy import lowlevel

from ._breaker_machine import CLOSED, DISABLED, HALF_OPEN, OPEN, BreakerMachine
from ._shared_memory import Page
from ._shared_owner import Owner


class BreakerEvent(NamedTuple):
    """One transition, sent to subscribers: ``time`` in epoch seconds."""

    name: str
    state: str
    previous: str
    time: float


# ---- the shared page -----------------------------------------------------------------------

# Word indexes (int64). Word 0 is the page id written by the holder.
# W_GATE is what the closed path reads: 0 means "closed, no injected
# faults: just run it"; anything else sends the caller down the slow path.
W_GATE, W_STATE, W_FAULT, W_HALF_OPEN_AT, W_SNAPSHOT = 1, 2, 3, 4, 5
W_TRIPS = 6  # times it opened, for otpy.metrics (which reads the page, never the owner)
CODES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2, DISABLED: 3}
RETIRED = 4  # the owner stopped: handles must reconnect
NAMES = {code: state for state, code in CODES.items()}
C_CLOSED, C_OPEN, C_DISABLED = CODES[CLOSED], CODES[OPEN], CODES[DISABLED]
assert W_GATE == 1  # CircuitBreaker.call reads words[1] as a constant

# Counter slots, one per process that uses the breaker: successes, rejected,
# "neither" (an ignored or unlisted exception). One writer each (that
# process), read by the owner for stats() and by otpy.metrics. Calls are
# their sum plus the failures reported, so the closed path bumps a single
# counter. A slot freed when its process exits keeps its counts, and the
# next process given it adds to them: the sum over every slot only grows.
SLOT_BASE = 16
SLOTS = 4096
SLOT_WIDTH = 3
VOID_SLOT = SLOTS  # past the last real slot: where processes beyond SLOTS write
HEADER_BYTES = -(-(SLOT_BASE + SLOT_WIDTH * (SLOTS + 1)) * 8 // 4096) * 4096
SNAPSHOT_BYTES = 1 << 20  # two halves, written alternately
PAGE_BYTES = HEADER_BYTES + 2 * SNAPSHOT_BYTES
_LENGTH = struct.Struct("<Q")
FAULT_SCALE = 1_000_000_000

def slot_words(slot: int) -> tuple[int, int, int]:
    base = SLOT_BASE + SLOT_WIDTH * slot
    return base, base + 1, base + 2


# ---- the owner -------------------------------------------------------------------------------

class BreakerOwner(Owner):
    """The process that owns one breaker's state (registered under its name)."""

    KIND = "breaker"

    @classmethod
    def page_bytes(cls, options: dict[str, Any]) -> int:
        return PAGE_BYTES

    def init(self, name: str, options: dict[str, Any], supervisor: Pid,
             page_ref: tuple[int, int, int]) -> None:
        otpy.trap_exit(True)  # so terminate runs when the supervisor stops us
        self.name = name
        self.options = options
        self.page_ref = page_ref
        self.supervisor = supervisor
        self.me = otpy.self()
        self.page = Page.open(*page_ref)
        self.words = self.page.words
        self.machine = BreakerMachine(options["max_failures"], options["window"],
                                      options["reset_after"], options["half_open_calls"],
                                      options["success_threshold"])
        self.slots: dict[Pid, int] = {}
        self.melts = 0
        self.subscribers: set[Pid] = set()
        self.watched: set[Pid] = set()
        self.timer: otpy.Ref | None = None
        self.log = lowlevel.logger(breaker=name)
        snapshot = self._load()
        if snapshot is not None:
            self.machine.restore(snapshot["machine"])
            self.slots = snapshot["slots"]
            self.melts = snapshot["melts"]
            self.subscribers = set(snapshot["subscribers"])
            for pid in [*self.slots, *self.subscribers, *(t[0] for t in self.machine.trials)]:
                self._watch(pid)  # a dead one gives a Down at once: handled as usual
            self.log.info("circuit breaker owner resumed", state=self.machine.state)
        self.words[W_FAULT] = round(options["fault_rate"] * FAULT_SCALE)
        lowlevel.annotate(self.me, otpy_breaker=name, otpy_breaker_page=page_ref[0])
        self._publish()
        self._arm_timer()

    def handle_call(self, request: Any, caller: lowlevel.From) -> Any:
        result = super().handle_call(request, caller)
        self._publish()
        return result

    def handle_info(self, message: Any) -> Any:
        if type(message) is tuple and message[:1] == ("$half_open",):
            if message[1] == self.machine.gen:
                self.timer = None
                self.machine.on_timer(message[1])
                if self.machine.gen == message[1]:
                    self._arm_timer()  # fired a hair early: wait out the rest
                self._publish()
        elif type(message) is Down and message.pid in self.watched:
            self._gone(message.pid)
            self._publish()
        return None

    def terminate(self, reason: Any) -> None:
        # Handles that look next reconnect; a replacement (if the supervisor
        # starts one) publishes the real state again.
        self.words[W_STATE] = RETIRED
        self.words[W_GATE] = 1

    # ---- operations (lowlevel.dispatch) ----------------------------------------------------

    def _op_attach(self, pid: Pid) -> dict[str, Any]:
        slot = self.slots.get(pid)
        if slot is None:
            used = set(self.slots.values())
            slot = next((i for i in range(SLOTS) if i not in used), VOID_SLOT)
            if slot == VOID_SLOT:
                self.log.warning("circuit breaker has no counter slot left", pid=repr(pid))
            else:
                self.slots[pid] = slot
            self._watch(pid)
        return {"page": self.page_ref, "slot": slot, "failure_on": self.options["failure_on"],
                "ignore": self.options["ignore"]}

    def _op_failure(self, trial: Any) -> str:
        self.machine.failure(trial)
        return self.machine.state

    def _op_success(self, trial: Any) -> str:
        self.machine.success(trial)
        return self.machine.state

    def _op_release(self, trial: Any) -> None:
        self.machine.release(trial)

    def _op_trial(self, trial: Any) -> tuple[str, Any]:
        """("run", None) if closed by now, ("trial", None) if granted,
        else ("reject", retry_after)."""
        m = self.machine
        if m.try_trial(trial):
            return ("trial", None)
        if m.state == CLOSED:
            return ("run", None)
        return ("reject", m.retry_after())

    def _op_melt(self) -> str:
        self.melts += 1
        self.machine.melt()
        return self.machine.state

    def _op_reset(self) -> str:
        self.machine.reset()
        return self.machine.state

    def _op_disable(self) -> str:
        self.machine.disable()
        return self.machine.state

    def _op_enable(self) -> str:
        self.machine.enable()
        return self.machine.state

    def _op_stats(self) -> dict[str, Any]:
        end = SLOT_BASE + SLOT_WIDTH * SLOTS  # every slot: freed ones keep their counts
        totals = [sum(self.words[SLOT_BASE + i:end:SLOT_WIDTH])
                  for i in range(SLOT_WIDTH)]
        m = self.machine
        successes, rejected, neither = totals
        calls = successes + rejected + neither + m.failures - self.melts
        return {"calls": calls, "successes": successes, "failures": m.failures,
                "rejected": rejected, "opened": m.opened, "state": m.state, "since": m.since,
                "failures_in_window": m.failures_in_window()}

    def _op_subscribe(self, pid: Pid) -> None:
        self.subscribers.add(pid)
        self._watch(pid)

    def _op_unsubscribe(self, pid: Pid) -> None:
        self.subscribers.discard(pid)

    # ---- keeping the page up to date --------------------------------------------------------

    def _watch(self, pid: Pid) -> None:
        if pid not in self.watched:
            self.watched.add(pid)
            otpy.monitor(pid)

    def _gone(self, pid: Pid) -> None:
        """A process that used the breaker exited: free its slot (its counts
        stay in it), give back its trial slots, forget its subscription."""
        self.watched.discard(pid)
        self.slots.pop(pid, None)
        for trial in [t for t in self.machine.trials if t[0] == pid]:
            self.machine.release(trial)
        self.subscribers.discard(pid)

    def _publish(self) -> None:
        """Page words, then events, then the snapshot: a caller that gets its
        reply after this reads the new state."""
        m = self.machine
        self.words[W_HALF_OPEN_AT] = (round(m.half_open_at * 1e9)
                                      if m.half_open_at is not None else 0)
        self.words[W_STATE] = CODES[m.state]
        self.words[W_TRIPS] = m.opened
        self.words[W_GATE] = 0 if m.state == CLOSED and not self.words[W_FAULT] else 1
        events, m.events = m.events, []
        for state, previous, at in events:
            self.log.info("circuit breaker state changed", state=state, previous=previous)
            event = BreakerEvent(self.name, state, previous, at)
            for pid in self.subscribers:
                otpy.send(pid, event)
        if events:
            self._arm_timer()
        self._save()

    def _arm_timer(self) -> None:
        if self.timer is not None:
            otpy.cancel_timer(self.timer)
            self.timer = None
        m = self.machine
        if m.state == OPEN and m.half_open_at is not None:
            delay = max(0.0, m.half_open_at - time.monotonic())
            self.timer = otpy.send_after(self.me, ("$half_open", m.gen), delay)

    def _save(self) -> None:
        data = pickle.dumps({"machine": self.machine.snapshot(), "slots": self.slots,
                             "melts": self.melts,
                             "subscribers": list(self.subscribers)})
        if _LENGTH.size + len(data) > SNAPSHOT_BYTES:
            self.log.warning("circuit breaker snapshot too large to keep", size=len(data))
            return
        half = 2 if self.words[W_SNAPSHOT] == 1 else 1
        self.page.write(HEADER_BYTES + (half - 1) * SNAPSHOT_BYTES,
                        _LENGTH.pack(len(data)) + data)
        self.words[W_SNAPSHOT] = half  # one word flips: a kill mid-write leaves the old one

    def _load(self) -> dict[str, Any] | None:
        half = self.words[W_SNAPSHOT]
        if half not in (1, 2):
            return None
        offset = HEADER_BYTES + (half - 1) * SNAPSHOT_BYTES
        (length,) = _LENGTH.unpack(self.page.read(offset, _LENGTH.size))
        try:
            return pickle.loads(self.page.read(offset + _LENGTH.size, length))
        except Exception as exc:  # never expected; start afresh rather than not at all
            self.log.error("circuit breaker snapshot unreadable; starting closed", error=repr(exc))
            return None
