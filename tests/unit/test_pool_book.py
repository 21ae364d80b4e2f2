"""The pool's bookkeeping (otpy_pool._pool_book) without processes: every
interleaving of checkouts, check-ins, cancels, timers, binds, crashes,
kills, retirements, health answers, start failures and caller deaths keeps
the book's invariants, and no caller is lost or answered twice.

A small world stands for the processes: workers that are alive, dead with
their Down still on its way, or gone; timers waiting to fire; the one
start under way. The world does the book's effects as the server would
(a Kill makes a worker dead, LEAVE makes it stop with RETIRED when the
world says so, AwaitDown takes a dead worker's Down at once) and checks
each answer: one per request, and a request not yet answered must be
somewhere the book will answer it from.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from otpy_pool import EVENT_KINDS, Worker
from otpy_pool._pool_book import (HELD, IDLE, KILLED, RETIRING, AwaitDown, CancelTimer, Cast,
                                  Emit, Kill, PoolBook, Reading, Reply, Start, Timer, Watch)
from otpy_pool._pool_options import make_options
from otpy_pool._protocol import (DEAD, EXPIRE, FILL, HEALTH, HEALTH_LATE, HEALTH_TICK, LEAVE, OK,
                                 OVERFLOW_IDLE, REPLACE, RETIRED, RETRY_START, RETURN, UNKNOWN)


class Plain(Worker):
    pass


class AsyncPlain(Worker):
    """An async worker: more than one slot is allowed."""

    async def init(self):
        pass


class From(NamedTuple):  # as otpy.From: the caller's pid and the call's ref
    pid: str
    ref: int


SESSIONS = ["a", "b", "c", "d"]
CALLERS = ["c1", "c2", "c3"]


class BookWorld(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book: PoolBook
        self.refs = iter(range(1, 10**9))
        self.start: Start | None = None  # the start under way
        self.alive: set[str] = set()
        self.dead: dict[str, Any] = {}  # died, Down not taken yet: its reason
        self.leaving: set[str] = set()  # told LEAVE, still alive
        self.timers: list[Timer] = []
        self.health: list[tuple[str, Any]] = []  # checks sent, not answered
        self.busy: dict[str, int] = {}  # worker -> commands run (for its counts page)
        self.running: dict[str, int] = {}  # worker -> commands it runs now
        self.asked: dict[int, tuple] = {}  # ref -> (kind, args, caller): not answered yet
        self.answers: dict[int, tuple] = {}
        self.dropped: set[int] = set()  # checkouts of callers that died: never answered
        self.held: dict[Any, str] = {}  # token -> worker, as the holder knows it
        self.claimed: set[str] = set()  # workers a caller holds by a claim
        self.callers = list(CALLERS)
        self.numbers = iter(range(1, 10**9))

    # ---- the pool ---------------------------------------------------------------------------

    @initialize(size=st.integers(1, 3), max_overflow=st.integers(0, 2), lazy=st.booleans(),
          max_queue=st.sampled_from([None, 0, 2]), strategy=st.sampled_from(["lifo", "fifo"]),
          health=st.booleans(), adopted=st.integers(0, 4), slots=st.sampled_from([1, 1, 2, 3]))
    def start_pool(self, size, max_overflow, lazy, max_queue, strategy, health, adopted, slots):
        opts = make_options(Plain if slots == 1 else AsyncPlain, (), None, "book", size=size,
                            max_overflow=max_overflow, lazy=lazy, max_queue=max_queue,
                            strategy=strategy, overflow_idle=1.0,
                            health_interval=1.0 if health else None, max_concurrency=slots)
        self.book = PoolBook(opts, first_key=adopted + 1, rng=random.Random(0))
        for n in range(adopted):  # a replaced server's workers, one holding a session
            pid = f"w{next(self.numbers)}"
            self.alive.add(pid)
            sessions = {SESSIONS[n]: [("add", (n,), {})]} if n < 2 else {}
            self.book.adopt(pid, sessions, Reading(3, 1, (), 0))
        self.do(self.book.begin())
        if health:
            self.timers.append(Timer((HEALTH_TICK,), 1.0))

    def do(self, effects: list) -> None:
        """The book's effects, done as the server does them."""
        for effect in effects:
            kind = type(effect)
            if kind is Start:
                assert self.start is None, "two starts at once"
                self.start = effect
            elif kind is Kill:
                self.die(effect.pid, ("shutdown", effect.why))
            elif kind is Reply:
                self.answer(effect)
            elif kind is Cast:
                self.cast(effect)
            elif kind is Timer:
                self.timers.append(effect)
            elif kind is CancelTimer:
                self.timers = [t for t in self.timers if t.key != effect.key]
            elif kind is Emit:
                assert effect.kind in EVENT_KINDS, effect
            elif kind is AwaitDown:  # the server waits for it: dead ones come at once
                if effect.pid in self.dead:
                    self.deliver(effect.pid)
                elif effect.pid in self.alive:
                    self.do(self.book.down_late(effect.pid))
            else:
                assert kind is Watch, effect

    def answer(self, reply: Reply) -> None:
        ref = reply.caller.ref
        assert ref not in self.answers, f"answered twice: {reply}"
        assert ref not in self.dropped, f"a dead caller's checkout answered: {reply}"
        kind, args, _ = self.asked.pop(ref)
        self.answers[ref] = reply.answer
        if kind == "checkout" and reply.answer[0] == OK:
            self.held[args[0]] = reply.answer[1]
        if kind == "bind" and reply.answer[0] == OK:
            assert reply.answer[1] in self.book.workers, "bound to a worker the book lost"

    def cast(self, effect: Cast) -> None:
        if effect.message[0] == LEAVE:
            if effect.pid in self.alive:  # a cast to a dead worker is lost, as otpy's are
                self.leaving.add(effect.pid)
        elif effect.message[0] == HEALTH:
            self.health.append((effect.pid, effect.message[1]))

    def die(self, pid: str, reason: Any) -> None:
        if pid in self.alive:
            self.alive.discard(pid)
            self.leaving.discard(pid)
            self.dead[pid] = reason

    def deliver(self, pid: str) -> None:
        reason = self.dead.pop(pid)
        running = self.running.pop(pid, 0)
        final = Reading(self.busy.get(pid, 0), 0, refs(running), running)
        self.do(self.book.worker_down(pid, reason, final))

    def reading(self, pid: str) -> Reading:
        return Reading(self.busy.get(pid, 0), 0, refs(self.running.get(pid, 0)), 0)

    def call(self, kind: str, caller_index: int, *args: Any) -> From:
        """A new request from one of the live callers."""
        caller = From(self.callers[caller_index], next(self.refs))
        self.asked[caller.ref] = (kind, args, caller.pid)
        return caller

    # ---- callers -----------------------------------------------------------------------------

    @rule(who=st.integers(0, 2), wait=st.sampled_from([None, 0.5]))
    def checkout(self, who, wait):
        token = ("t", next(self.refs))
        caller = self.call("checkout", who, token)
        self.do(self.book.checkout(caller, token, wait))

    @precondition(lambda self: self.held)
    @rule(data=st.data(), how=st.sampled_from([RETURN, REPLACE, DEAD]))
    def checkin(self, data, how):
        token = data.draw(st.sampled_from(sorted(self.held, key=repr)))
        worker = self.held.pop(token)
        if how == DEAD and worker in self.alive:
            how = REPLACE  # as the server decides
        self.do(self.book.checkin(token, how))

    @precondition(lambda self: any(kind == "checkout" for kind, _, _ in self.asked.values()))
    @rule(data=st.data())
    def cancel(self, data):
        """A caller gave up waiting (its own timer): it expects no answer."""
        waiting = {args[0]: ref for ref, (kind, args, _) in self.asked.items()
                   if kind == "checkout"}
        token = data.draw(st.sampled_from(sorted(waiting, key=repr)))
        self.dropped.add(waiting[token])
        del self.asked[waiting[token]]
        self.do(self.book.cancel(token))

    @rule(who=st.integers(0, 2), sid=st.sampled_from(SESSIONS), data=st.data())
    def bind(self, who, sid, data):
        stale = data.draw(st.sampled_from([None, *sorted(self.book.workers)]))
        stale_dead = stale is not None and stale in self.book.workers and stale not in self.alive
        in_flight = {pid: self.running.get(pid, 0) for pid in self.alive}
        self.do(self.book.bind(self.call("bind", who, sid), sid, stale, stale_dead, in_flight))

    @rule(who=st.integers(0, 2), sid=st.sampled_from(SESSIONS))
    def end_session(self, who, sid):
        self.do(self.book.end_session(self.call("end_session", who, sid), sid))

    @precondition(lambda self: self.book.workers or self.book.died_running)
    @rule(who=st.integers(0, 2), data=st.data(), kind=st.sampled_from(["ran", "deadline"]))
    def about_a_worker(self, who, data, kind):
        """A caller's command met its worker's death (RAN), or ran past its deadline."""
        pid = data.draw(st.sampled_from(sorted({*self.book.workers, *self.book.died_running})))
        if kind == "ran":
            if pid in self.alive:  # a caller asks only after it saw the worker die
                self.die(pid, "killed")
            self.do(self.book.ran(self.call("ran", who, pid), pid))
        else:
            self.do(self.book.deadline(self.call("deadline", who, pid), pid))

    @rule(who=st.integers(0, 2))
    def caller_dies(self, who):
        pid = self.callers[who]
        self.callers[who] = f"c{next(self.numbers) + 100}"  # its place taken by a new caller
        for token in [t for t in self.held if self.book.checkouts.get(t, (None, None))[1] == pid]:
            del self.held[token]
        for ref in [r for r, (kind, _, caller) in self.asked.items()
                    if kind == "checkout" and caller == pid]:
            del self.asked[ref]  # its wait is dropped, not answered
            self.dropped.add(ref)
        self.do(self.book.caller_down(pid))

    # ---- workers -----------------------------------------------------------------------------

    @precondition(lambda self: self.start is not None)
    @rule(ok=st.booleans())
    def start_ends(self, ok):
        start, self.start = self.start, None
        if ok:
            pid = f"w{next(self.numbers)}"
            self.alive.add(pid)
            self.do(self.book.worker_up(start.key, pid))
        else:
            self.do(self.book.start_failed(start.key, RuntimeError("init refused")))

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), reason=st.sampled_from(["killed", ("exit", 3), RETIRED]))
    def worker_dies(self, data, reason):
        self.die(data.draw(st.sampled_from(sorted(self.alive))), reason)

    @precondition(lambda self: self.leaving)
    @rule(data=st.data())
    def worker_leaves(self, data):
        """A worker told LEAVE stops, with RETIRED."""
        self.die(data.draw(st.sampled_from(sorted(self.leaving))), RETIRED)

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def down_arrives(self, data):
        self.deliver(data.draw(st.sampled_from(sorted(self.dead))))

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def command_runs(self, data):
        """A bound session's command starts or ends on a worker (the server
        does not hear of it; the worker's counts page says), up to its slots."""
        pid = data.draw(st.sampled_from(sorted(self.alive)))
        running = self.running.get(pid, 0)
        if running and (running == self.book.slots or data.draw(st.booleans())):
            self.running[pid] = running - 1
        else:
            self.running[pid] = running + 1
            self.busy[pid] = self.busy.get(pid, 0) + 1

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def command_cancelled(self, data):
        """An async worker cancelled a command at its deadline, in time."""
        self.do(self.book.timed_out(data.draw(st.sampled_from(sorted(self.alive)))))

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), what=st.sampled_from(["worn", "logged", "replayed", "lost"]))
    def worker_tells(self, data, what):
        pid = data.draw(st.sampled_from(sorted(self.alive)))
        sid = data.draw(st.sampled_from(SESSIONS))
        if what == "worn":
            self.do(self.book.worn(pid))
        elif what == "logged":
            self.do(self.book.logged(pid, sid, ("add", (1,), {})))
        else:
            self.do(self.book.replayed(pid, sid, None if what == "replayed" else "OSError()"))

    @precondition(lambda self: self.health)
    @rule(data=st.data(), healthy=st.booleans())
    def health_answer(self, data, healthy):
        pid, token = self.health.pop(data.draw(st.integers(0, len(self.health) - 1)))
        if pid in self.alive:
            self.do(self.book.healthy(pid, token, healthy, None if healthy else "sick"))

    @precondition(lambda self: self.timers)
    @rule(data=st.data())
    def timer_fires(self, data):
        self.fire(self.timers.pop(data.draw(st.integers(0, len(self.timers) - 1))))

    def fire(self, timer: Timer) -> None:
        tag, *args = timer.message
        book = self.book
        if tag == EXPIRE:
            self.do(book.expire(*args))
        elif tag == FILL:
            self.do(book.fill_due())
        elif tag == RETRY_START:
            self.do(book.retry_due())
        elif tag == OVERFLOW_IDLE:
            self.do(book.overflow_idle(*args))
        elif tag == HEALTH_TICK:
            self.do(book.health_tick({pid: self.reading(pid) for pid in book.workers}))
        else:
            assert tag == HEALTH_LATE, timer
            self.do(book.health_late(args[0], args[1], self.reading(args[0])))

    # ---- claims (see _claims): callers holding free workers without the server ----------------

    @precondition(lambda self: self.book.slots == 1 and any(
        not self.book.workers[pid].overflow for pid in self.book.idle))
    @rule(data=st.data())
    def claims_met_when_slots_are_taken_back(self, data):
        """The server takes the open slots back (before a checkout) and finds
        these free workers claimed by callers."""
        free = sorted(pid for pid in self.book.idle if not self.book.workers[pid].overflow)
        pids = data.draw(st.lists(st.sampled_from(free), min_size=1, unique=True))
        self.claimed |= set(pids)
        self.do(self.book.claimed(pids))

    @precondition(lambda self: self.claimed)
    @rule(data=st.data())
    def a_claim_ends(self, data):
        """Its caller released it, or died: the server's thread has the slot."""
        pid = data.draw(st.sampled_from(sorted(self.claimed)))
        self.claimed.discard(pid)
        self.do(self.book.released(pid))

    # ---- what must hold after every step ------------------------------------------------------

    @invariant()
    def book_invariants(self):
        self.book.invariants()

    @invariant()
    def no_lost_caller(self):
        """A request not answered yet is where the book will answer it from:
        a checkout in the queue or the start under way for it, a bind
        waiting for that start or for a worker's Down, RAN and DEADLINE at
        a worker's Down."""
        book = self.book
        waiting = {w.caller.ref for w in book.queue}
        if book.starting is not None and book.starting.waiter is not None:
            waiting.add(book.starting.waiter.caller.ref)
        waiting |= {caller.ref for caller, _, _ in book.binds_waiting}
        waiting |= {action[1].ref for actions in book.at_down.values() for action in actions}
        for ref, (kind, args, _) in self.asked.items():
            assert ref in waiting, f"{kind} {args} is lost"

    @invariant()
    def the_world_agrees(self):
        """The book's live workers are the world's alive or dead-not-yet-down ones."""
        assert set(self.book.workers) <= self.alive | set(self.dead)
        for pid, w in self.book.workers.items():
            assert w.state not in (IDLE, HELD) or pid not in self.leaving, f"{w} told to leave"
            # a retired or killed worker is on its way out: told to LEAVE, or dead
            assert w.state not in (RETIRING, KILLED) or pid in self.leaving \
                or pid in self.dead, f"{w} never leaves"
        for running in self.book.died_running.values():  # as its counts page said, or unknown
            assert running == UNKNOWN or running == refs(len(running)), running

    def teardown(self):
        """Let the world settle (Downs taken, starts done, every timer that
        ends a wait fired): then every request has its answer, but a
        checkout waiting without a limit for a worker still held."""
        ends_a_wait = (EXPIRE, FILL, RETRY_START)
        for _ in range(200):
            if self.dead:
                self.deliver(sorted(self.dead)[0])
            elif self.leaving:
                self.die(sorted(self.leaving)[0], RETIRED)
            elif self.start is not None:
                self.start_ends(ok=True)
            elif self.claimed:
                self.do(self.book.released(self.claimed.pop()))
            elif any(t.message[0] in ends_a_wait for t in self.timers):
                timer = next(t for t in self.timers if t.message[0] in ends_a_wait)
                self.timers.remove(timer)
                self.fire(timer)
            else:
                break
            self.book.invariants()
        unlimited = {w.caller.ref for w in self.book.queue if w.wait is None}
        for ref, (kind, args, _) in self.asked.items():
            assert ref in unlimited, f"{kind} {args} never answered"


def refs(n: int) -> tuple:
    """The refs of ``n`` commands running on a worker, as its counts page says."""
    return tuple(("c", k) for k in range(1, n + 1))


BookWorld.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
test_every_interleaving_keeps_the_book = BookWorld.TestCase


def test_an_overflow_worker_retired_while_idle_ignores_its_idle_timer():
    """A rare interleaving, written out: the idle timer of an overflow worker
    fires after the worker was retired (worn) but before its Down. The
    server used to take it out of the idle list a second time and crash."""
    book = PoolBook(make_options(Plain, (), None, "p", size=1, max_overflow=1,
                                 overflow_idle=1.0))
    (start,) = [e for e in book.begin() if type(e) is Start]
    book.worker_up(start.key, "w1")
    book.checkout(From("c", 1), "t1", None)  # w1 held
    (start,) = [e for e in book.checkout(From("c", 2), "t2", None) if type(e) is Start]
    book.worker_up(start.key, "w2")  # the overflow worker, held by t2
    (timer,) = [e for e in book.checkin("t2", RETURN) if type(e) is Timer]
    assert timer.message[:2] == (OVERFLOW_IDLE, "w2")
    assert any(e == Cast("w2", (LEAVE,)) for e in book.worn("w2"))
    assert book.overflow_idle(*timer.message[1:]) == []
    book.invariants()
    assert book.workers["w2"].state == RETIRING


def test_a_caller_waiting_on_a_failed_start_gets_a_worker_checked_in_meanwhile():
    """Written out from a run of the world above: the caller an overflow
    start was for waits on that start; a worker checked in meanwhile goes
    idle; when the start fails, the caller takes that idle worker instead
    of waiting beside it until its timeout."""
    book = PoolBook(make_options(Plain, (), None, "p", size=1, max_overflow=1))
    (start,) = [e for e in book.begin() if type(e) is Start]
    book.worker_up(start.key, "w1")
    book.checkout(From("c", 1), "t1", None)  # w1 held
    (start,) = [e for e in book.checkout(From("c", 2), "t2", None) if type(e) is Start]
    book.checkin("t1", RETURN)  # w1 idle: t2 waits on the overflow start
    effects = book.start_failed(start.key, RuntimeError("init refused"))
    assert Reply(From("c", 2), (OK, "w1")) in effects
    book.invariants()
    assert book.workers["w1"].state == HELD and not book.queue


def test_a_worker_claimed_meanwhile_is_held_until_its_claim_ends_then_serves_the_queue():
    """The server found w1 claimed by a caller when it took the slots back
    for a checkout: w1 is busy until the claim ends, then the queued caller
    gets it (and a claim's end is no checkin event)."""
    book = PoolBook(make_options(Plain, (), None, "p", size=1))
    (start,) = [e for e in book.begin() if type(e) is Start]
    book.worker_up(start.key, "w1")
    book.claimed(["w1"])
    book.invariants()
    assert (book.status([None]).idle, book.status([None]).busy) == (0, 1)
    book.checkout(From("c", 1), "t1", None)
    assert len(book.queue) == 1
    effects = book.released("w1")
    assert Reply(From("c", 1), (OK, "w1")) in effects
    assert [e.kind for e in effects if type(e) is Emit] == ["checkout"]
    book.invariants()
    book.checkin("t1", RETURN)
    assert list(book.idle) == ["w1"] and book.released("w1") == []  # a late end: nothing


def async_book(**options) -> PoolBook:
    """A book of async workers w1, w2, ..., all up."""
    book = PoolBook(make_options(AsyncPlain, (), None, "p", **options))
    effects, n = book.begin(), 0
    while any(type(e) is Start for e in effects):
        (start,) = [e for e in effects if type(e) is Start]
        n += 1
        effects = book.worker_up(start.key, f"w{n}")
    return book


def test_a_worker_with_two_slots_serves_two_checkouts_then_queues_the_third():
    book = async_book(size=1, max_concurrency=2)
    assert Reply(From("c", 1), (OK, "w1")) in book.checkout(From("c", 1), "t1", None)
    assert Reply(From("c", 2), (OK, "w1")) in book.checkout(From("c", 2), "t2", None)
    book.checkout(From("c", 3), "t3", None)
    assert [w.token for w in book.queue] == ["t3"] and not book.idle
    book.invariants()
    assert Reply(From("c", 3), (OK, "w1")) in book.checkin("t1", RETURN)
    book.invariants()
    book.checkin("t2", RETURN)
    book.checkin("t3", RETURN)
    assert book.workers["w1"].state == IDLE and list(book.idle) == ["w1"]
    book.invariants()


def test_a_replaced_checkout_of_a_shared_worker_kills_it_once_the_others_are_done():
    """Its state is unknown (the holder died, say), but other holders run
    commands on it: it leaves service now and is killed at its last checkin."""
    book = async_book(size=1, max_concurrency=3)
    book.checkout(From("c", 1), "t1", None)
    book.checkout(From("c", 2), "t2", None)
    effects = book.checkin("t1", REPLACE)
    assert not any(type(e) is Kill for e in effects)
    assert book.workers["w1"].state == "retiring_held" and "w1" not in book.idle
    book.invariants()
    assert Kill("w1", "checkout_replaced") in book.checkin("t2", RETURN)
    book.invariants()


def test_a_new_session_goes_to_the_worker_with_fewer_commands_in_flight():
    book = async_book(size=2, max_concurrency=4)
    for busy, quiet in (("w1", "w2"), ("w2", "w1")):
        book.end_session(From("c", 0), "s")  # unbound again (answered either way)
        effects = book.bind(From("c", 1), "s", None, False, {busy: 3, quiet: 1})
        assert Reply(From("c", 1), (OK, quiet)) in effects
    book.invariants()
