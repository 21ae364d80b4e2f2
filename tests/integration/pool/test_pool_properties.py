"""The pool against a model: random binds, commands, worker SIGKILLs,
end_session, checkouts and pipelined batches. No session ever sees another's state, no command
is lost or run twice (``add`` returns the session's count of notes), and the
counts in ``status()`` match the model's."""

from __future__ import annotations

import pytest

import os
import signal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from otpy import lowlevel
from otpy_pool import Pool, PoolEvent, SessionNotFound

from helpers import DEADLINE, expect
from pool_workers import Notes

pytestmark = pytest.mark.layer("full")  # real pool workers

SESSIONS = st.sampled_from(["a", "b", "c", "d"])


class PoolModel(RuleBasedStateMachine):
    @initialize()
    def start_pool(self):
        lowlevel.flush(lambda m: isinstance(m, PoolEvent))
        self.pool = Pool.start_link(Notes, size=2)
        self.pool.subscribe()
        self.notes: dict[str, list[str]] = {}  # the sessions the pool knows, and their notes
        self.pending_replay: set[str] = set()
        self.commands = self.restarts = self.recovered = self.errors = 0
        self.serial = 0

    def teardown(self):
        if hasattr(self, "pool"):
            self.pool.stop()
            lowlevel.flush(lambda m: isinstance(m, PoolEvent))

    def _used(self, session: str) -> None:
        self.commands += 1
        self.notes.setdefault(session, [])
        if session in self.pending_replay:
            self.pending_replay.discard(session)
            self.recovered += 1

    @rule(session=SESSIONS)
    def add(self, session):
        self.serial += 1
        note = f"{session}{self.serial}"
        count = self.pool.execute("add", note, session=session)
        self._used(session)
        self.notes[session].append(note)
        assert count == len(self.notes[session])  # ran exactly once

    @rule(session=SESSIONS)
    def add_many(self, session):
        """Pipelined: both notes outstanding at once, run in order, once each."""
        notes = [f"{session}{self.serial + 1}", f"{session}{self.serial + 2}"]
        self.serial += 2
        counts = self.pool.execute_many("add", [(n,) for n in notes], session=session)
        for note in notes:
            self._used(session)
            self.notes[session].append(note)
        assert counts == [len(self.notes[session]) - 1, len(self.notes[session])]

    @rule(session=SESSIONS)
    def read(self, session):
        notes = self.pool.execute("notes", session=session)
        self._used(session)
        assert notes == self.notes[session]  # its own notes, all of them, in order

    @rule()
    def stateless(self):
        assert self.pool.execute("state") == {}
        self.commands += 1

    @rule()
    def checkout(self):
        with self.pool.checkout() as worker:
            assert worker.execute("ping") == ("pong", "notes", None)
        self.commands += 1

    @rule()
    def failing_command(self):
        try:
            self.pool.execute("fail", "k")
        except KeyError:
            pass
        else:
            raise AssertionError("the command's KeyError did not reach the caller")
        self.commands += 1
        self.errors += 1

    @rule()
    def checkout_that_raises(self):
        """The held worker is replaced (planned: not a restart); its
        sessions move by replay."""
        try:
            with self.pool.checkout() as worker:
                self._sessions_of(worker.pid)
                raise LookupError("body failed")
        except LookupError:
            pass
        self._wait_replaced(worker.pid)

    def _sessions_of(self, victim):
        for session, notes in self.notes.items():
            if notes and self.pool.worker_of(session) == victim:
                self.pending_replay.add(session)

    def _wait_replaced(self, victim):
        assert expect(lambda m: isinstance(m, PoolEvent) and m.kind == "worker_exited",
                      DEADLINE).worker == victim
        expect(lambda m: isinstance(m, PoolEvent) and m.kind == "worker_started", DEADLINE)

    @rule(index=st.integers(0, 1))
    def crash(self, index):
        workers = self.pool.workers()
        victim = workers[index % len(workers)]
        self._sessions_of(victim)
        os.kill(victim.os_pid, signal.SIGKILL)
        self._wait_replaced(victim)
        self.restarts += 1

    @rule(session=SESSIONS)
    def end(self, session):
        if session in self.notes:
            self.pool.end_session(session)
            del self.notes[session]
            self.pending_replay.discard(session)
        else:
            try:
                self.pool.end_session(session)
            except SessionNotFound:
                pass
            else:
                raise AssertionError(f"ending unknown session {session!r} did not fail")

    @invariant()
    def counts_match(self):
        if not hasattr(self, "pool"):
            return
        status = self.pool.status()
        assert status.sessions == len(self.notes)
        assert status.total_commands == self.commands
        assert status.errors == self.errors
        assert status.timeouts == 0 and status.sessions_lost == 0
        assert status.worker_restarts == self.restarts
        assert status.sessions_recovered == self.recovered
        assert status.workers == 2 and status.busy == 0 and status.queued == 0


PoolModel.TestCase.settings = settings(max_examples=20, stateful_step_count=15, deadline=None)
test_pool_against_a_model = PoolModel.TestCase
