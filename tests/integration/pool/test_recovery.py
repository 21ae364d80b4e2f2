"""Recovery and the protection chain, with real faults: SIGKILLed workers in
the middle of a command, hung commands, a full queue, an open breaker, a
denied limit. Executions are counted by the commands themselves (a line per
run in a file), so "at most once" is checked, not assumed."""

from __future__ import annotations

import os
import random
import signal
import time

import otpy
import pytest
from otpy_pool import (CircuitBreaker, CircuitOpen, CommandTimeout, DeadlineExceeded, Policy,
                       Pool, PoolError, PoolOverloaded, PoolTimeout, PoolUnavailable, RateLimited,
                       RateLimiter, Recovery, SessionLost, Worker, WorkerCrashed, classify,
                       command, protect)

pytestmark = pytest.mark.layer("full")  # real pool workers

DEADLINE = 10.0


class Jobs(Worker):
    """Commands that count their runs in ``log`` and misbehave on request."""

    def init(self, log):
        self.log = log

    def _ran(self, what):
        with open(self.log, "a") as f:
            f.write(f"{what} {os.getpid()}\n")

    @command
    def run(self, session, x):
        self._ran("run")
        return x * 2

    @command
    def charge(self, session, amount):  # not idempotent
        self._ran("charge")
        return amount

    @command
    def announce_and_hang(self, session, parent, flag):
        """Hang (until killed) the first time, while ``flag`` does not exist
        (made before the announcement: a kill cannot come before it)."""
        self._ran("hang")
        first = not os.path.exists(flag)
        if first:
            open(flag, "w").close()
        otpy.send(parent, ("running", os.getpid()))
        if first:
            time.sleep(60)
        return "finished"

    @command
    def charge_and_hang(self, session, parent):
        self._ran("charge")
        otpy.send(parent, ("running", os.getpid()))
        time.sleep(60)

    @command
    def bad_input(self, session):
        raise ValueError("the caller's own mistake")


def runs(log, what):
    try:
        with open(log) as f:
            return sum(1 for line in f if line.split()[0] == what)
    except FileNotFoundError:
        return 0


@pytest.fixture
def log(tmp_path):
    return str(tmp_path / "runs.log")


@pytest.fixture
def pool(log):
    pool = Pool.start_link(Jobs, args=(log,), size=2, name="jobs")
    yield pool
    pool.stop()


def killer(times=1):
    """A process that SIGKILLs each worker that tells it it is running a
    command (pass its pid to the command as ``parent``)."""
    def body():
        for _ in range(times):
            _, os_pid = otpy.receive(timeout=DEADLINE, match=lambda m: type(m) is tuple
                                     and m[0] == "running")
            os.kill(os_pid, signal.SIGKILL)
    return otpy.spawn(body)


# ---- classification and policies --------------------------------------------------

def test_classify_maps_every_error_of_pool_breaker_and_limiter():
    assert classify(WorkerCrashed("killed")) == "worker_crashed"
    assert classify(CommandTimeout("x")) == "timeout"
    assert classify(PoolTimeout("x")) == "timeout"
    assert classify(PoolOverloaded("x")) == "overloaded"
    assert classify(PoolUnavailable(KeyError("init"))) == "unavailable"
    assert classify(CircuitOpen("db", 1.0)) == "circuit_open"
    assert classify(RateLimited(1.0)) == "rate_limited"
    assert classify(SessionLost("s", ValueError())) == "session_lost"
    assert classify(KeyError("a command's own")) == "permanent"


def test_a_user_classifier_comes_first_and_none_falls_through():
    def mine(exc):
        return "transient" if isinstance(exc, ConnectionError) else None

    assert classify(ConnectionError(), mine) == "transient"
    assert classify(WorkerCrashed("killed"), mine) == "worker_crashed"


def test_policy_backoff_is_capped_exponential_with_jitter():
    plain = Policy(retries=5, backoff=0.01, max_backoff=0.05)
    assert [plain.delay(n) for n in (1, 2, 3, 4)] == [0.01, 0.02, 0.04, 0.05]
    rng = random.Random(7)
    full = Policy(backoff=0.1, jitter="full")
    equal = Policy(backoff=0.1, jitter="equal")
    for n in range(1, 6):
        d = min(1.0, 0.1 * 2 ** (n - 1))
        assert 0 <= full.delay(n, rng) <= d
        assert d / 2 <= equal.delay(n, rng) <= d


def test_bad_policies_and_options_are_refused_by_name():
    with pytest.raises(ValueError, match="retries"):
        Policy(retries=-1)
    with pytest.raises(ValueError, match="jitter"):
        Policy(jitter="some")
    with pytest.raises(TypeError, match="fallback"):
        Policy(fallback=3)
    with pytest.raises(TypeError, match="policy for 'timeout'"):
        Recovery.child_spec("r", {"timeout": "retry please"})
    with pytest.raises(ValueError, match="deadline"):
        protect(object(), deadline=0)
    with pytest.raises(TypeError, match="limiter"):
        protect(object(), limiter=("api", "k"))


# ---- outcomes with real faults ----------------------------------------------------

def test_idempotent_command_is_retried_on_another_worker_after_a_sigkill(pool, log, tmp_path):
    recovery = Recovery.start_link("recovery", {"worker_crashed": Policy(retries=2,
                                                                         failover=True)})
    guarded = protect(pool, recovery=recovery, idempotent={"announce_and_hang"})
    flag = str(tmp_path / "hung-once")
    result = guarded.execute("announce_and_hang", killer(), flag, session="s1")
    assert result == "finished"
    assert runs(log, "hang") == 2
    stats = recovery.stats()["worker_crashed"]
    assert (stats.errors, stats.retried, stats.recovered, stats.failed_over) == (1, 1, 1, 1)
    assert recovery.recent()[-1]["outcome"] == "recovered"
    recovery.stop()


def test_a_non_idempotent_command_that_may_have_started_is_never_run_twice(pool, log):
    recovery = Recovery.start_link("recovery", {"worker_crashed": Policy(retries=5)})
    guarded = protect(pool, recovery=recovery, idempotent={"run"})
    with pytest.raises(WorkerCrashed):
        guarded.execute("charge_and_hang", killer(), session="payer")
    assert runs(log, "charge") == 1
    assert recovery.stats()["worker_crashed"].gave_up == 1
    recovery.stop()


def test_a_hung_command_is_cut_at_the_deadline_and_the_caller_returns_by_it(pool, log):
    guarded = protect(pool, deadline=0.5)
    began = time.monotonic()
    with pytest.raises(CommandTimeout):
        guarded.execute("charge_and_hang", otpy.self(), session="slow")
    elapsed = time.monotonic() - began
    assert elapsed < 0.5 + 1.0, f"returned {elapsed:.2f}s after a 0.5 s deadline"
    assert pool.execute("run", 2, session="slow") == 4  # the pool replaced the hung worker


def test_timeout_policy_retries_an_idempotent_hung_command(pool, log, tmp_path):
    recovery = Recovery.start_link("recovery", {"timeout": Policy(retries=1)})
    guarded = protect(pool, recovery=recovery, idempotent={"announce_and_hang"})
    flag = str(tmp_path / "hung-once")
    assert guarded.execute("announce_and_hang", otpy.self(), flag, timeout=0.3) == "finished"
    assert runs(log, "hang") == 2
    assert recovery.stats()["timeout"].recovered == 1
    recovery.stop()


def test_a_full_queue_is_retried_even_for_a_non_idempotent_command(log):
    pool = Pool.start_link(Jobs, args=(log,), size=1, max_queue=0, name="tiny")
    recovery = Recovery.start_link("recovery", {"overloaded": Policy(retries=50, backoff=0.01,
                                                                     max_backoff=0.05)})
    try:
        me = otpy.self()

        def hold(parent):
            with pool.checkout() as w:
                otpy.send(parent, "holding")
                otpy.receive(timeout=DEADLINE, match=lambda m: m == "release")
            otpy.send(parent, "released")

        holder = otpy.spawn(hold, me)
        otpy.receive(timeout=DEADLINE, match=lambda m: m == "holding")
        with pytest.raises(PoolOverloaded):
            pool.execute("charge", 1)  # the only worker is held and nobody may queue
        assert runs(log, "charge") == 0
        guarded = protect(pool, recovery=recovery)  # "charge" is not idempotent
        otpy.send_after(holder, "release", 0.1)
        assert guarded.execute("charge", 5) == 5
        otpy.receive(timeout=DEADLINE, match=lambda m: m == "released")
        assert runs(log, "charge") == 1
        assert recovery.stats()["overloaded"].recovered == 1
    finally:
        recovery.stop()
        pool.stop()


def test_an_open_breaker_falls_back_without_running_the_command(pool, log):
    db = CircuitBreaker.start_link("db", max_failures=1, window=10.0, reset_after=30.0)
    recovery = Recovery.start_link("recovery", {
        "circuit_open": Policy(fallback=lambda command, *a, **k: ("cached", command, a, k))})
    try:
        db.melt()
        assert db.state == "open"
        guarded = protect(pool, breaker=db, recovery=recovery)
        assert guarded.execute("run", 21, session="u") == ("cached", "run", (21,),
                                                           {"session": "u"})
        assert runs(log, "run") == 0
        assert recovery.stats()["circuit_open"].fell_back == 1
    finally:
        recovery.stop()
        db.stop()


def test_a_fallback_that_raises_is_counted_as_given_up_not_fallen_back(pool, log):
    def broken_fallback(command, *args, **kwargs):
        raise LookupError("no cached answer either")

    db = CircuitBreaker.start_link("db", max_failures=1, window=10.0, reset_after=30.0)
    recovery = Recovery.start_link("recovery", {"circuit_open": Policy(fallback=broken_fallback)})
    try:
        db.melt()
        with pytest.raises(LookupError, match="no cached answer") as info:
            protect(pool, breaker=db, recovery=recovery).execute("run", 1)
        assert any("raised by the fallback for CircuitOpen" in n for n in info.value.__notes__)
        stats = recovery.stats()["circuit_open"]  # its report was cast before this call
        assert (stats.fell_back, stats.gave_up) == (0, 1)
        assert recovery.recent()[-1]["outcome"] == "gave_up"
    finally:
        recovery.stop()
        db.stop()


def test_a_deadline_too_short_to_start_a_command_kills_no_worker(pool, log):
    workers = pool.workers()
    guarded = protect(pool, deadline=0.001)
    for _ in range(20):
        with pytest.raises(DeadlineExceeded, match="1 ms"):
            guarded.execute("run", 1, session="s")
        with pytest.raises(DeadlineExceeded):
            guarded.execute("run", 1)
    assert pool.workers() == workers
    status = pool.status()
    assert (status.worker_restarts, status.timeouts) == (0, 0)
    assert runs(log, "run") == 0


def test_crashes_open_the_breaker_but_the_callers_bad_input_does_not(pool, log):
    db = CircuitBreaker.start_link("db", max_failures=2, window=10.0, reset_after=30.0)
    try:
        guarded = protect(pool, breaker=db)
        for _ in range(3):
            with pytest.raises(ValueError):
                guarded.execute("bad_input")
        assert db.state == "closed" and db.stats()["failures"] == 0
        for i in range(2):
            with pytest.raises(WorkerCrashed):
                guarded.execute("charge_and_hang", killer(), session=f"c{i}")
        assert db.state == "open"
        with pytest.raises(CircuitOpen):
            guarded.execute("run", 1)
    finally:
        db.stop()


def test_a_denied_limit_is_not_a_breaker_failure_and_gives_up_with_every_attempt(pool, log):
    api = RateLimiter.start_link("api")
    db = CircuitBreaker.start_link("db", max_failures=1, window=10.0, reset_after=30.0)
    recovery = Recovery.start_link("recovery", {"rate_limited": Policy(retries=0)})
    try:
        guarded = protect(pool, limiter=(api, "user:42", 1, 60.0), breaker=db,
                          recovery=recovery)
        assert guarded.execute("run", 1) == 2
        with pytest.raises(RateLimited) as info:
            guarded.execute("run", 2)
        assert 0 < info.value.retry_after <= 60.0
        assert db.state == "closed" and db.stats()["failures"] == 0
        assert runs(log, "run") == 1
        assert recovery.stats()["rate_limited"].gave_up == 1
    finally:
        recovery.stop()
        db.stop()
        api.stop()


def test_one_except_catches_what_the_chain_raises_and_not_the_commands_own(pool, log):
    api = RateLimiter.start_link("api")
    db = CircuitBreaker.start_link("db", max_failures=1, window=10.0, reset_after=30.0)
    try:
        caught = []
        for guarded, args in [
                (protect(pool, limiter=(api, "k", 1, 60.0)), ("run", 1)),
                (protect(pool, limiter=(api, "k", 1, 60.0)), ("run", 1)),  # denied
                (protect(pool, breaker=db), ("charge_and_hang", killer())),  # crashed: opens
                (protect(pool, breaker=db), ("run", 1)),  # open
                (protect(pool, deadline=0.001), ("run", 1))]:
            try:
                guarded.execute(*args)
            except PoolError as exc:
                caught.append(type(exc))
        assert caught == [RateLimited, WorkerCrashed, CircuitOpen, DeadlineExceeded]
        with pytest.raises(ValueError):  # not a PoolError: the command's own
            try:
                protect(pool).execute("bad_input")
            except PoolError:
                pytest.fail("a command's own exception caught as a PoolError")
    finally:
        db.stop()
        api.stop()


def test_giving_up_attaches_every_attempt(pool, log):
    recovery = Recovery.start_link("recovery", {"permanent": Policy(retries=0),
                                                "worker_crashed": Policy(retries=1)})
    guarded = protect(pool, recovery=recovery, idempotent={"charge_and_hang"})
    with pytest.raises(WorkerCrashed) as info:
        guarded.execute("charge_and_hang", killer(2), session="twice")
    notes = info.value.__notes__
    assert any(n.startswith("attempt 1: worker_crashed") for n in notes)
    assert notes[-1] == "gave up after 2 attempts"
    assert runs(log, "charge") == 2
    recovery.stop()


def test_no_retry_starts_after_the_deadline(pool, log):
    recovery = Recovery.start_link("recovery", {"timeout": Policy(retries=10, backoff=0.2)})
    guarded = protect(pool, recovery=recovery, deadline=0.6, idempotent={"charge_and_hang"})
    began = time.monotonic()
    with pytest.raises(otpy.Timeout):
        guarded.execute("charge_and_hang", otpy.self(), timeout=0.25)
    assert time.monotonic() - began < 0.6 + 1.0
    assert runs(log, "charge") <= 2  # 0.25 s + 0.2 s backoff + 0.15 s: never a third
    recovery.stop()


def test_a_handle_by_name_works_from_another_process_with_its_fallback(pool, log):
    recovery = Recovery.start_link("recovery", {
        "circuit_open": Policy(fallback=lambda *a, **k: "fallback from elsewhere")})
    db = CircuitBreaker.start_link("db", max_failures=1, window=10.0, reset_after=30.0)
    try:
        db.melt()

        def elsewhere(parent):
            guarded = protect(Pool("jobs"), breaker=CircuitBreaker("db"),
                              recovery=Recovery("recovery"))
            otpy.send(parent, ("answer", guarded.execute("run", 1)))

        otpy.spawn(elsewhere, otpy.self())
        answer = otpy.receive(timeout=DEADLINE, match=lambda m: type(m) is tuple
                              and m[0] == "answer")
        assert answer[1] == "fallback from elsewhere"
    finally:
        db.stop()
        recovery.stop()


def test_sigkill_of_the_orchestrator_never_fails_a_call(pool, log):
    recovery = Recovery.start_link("recovery", {"permanent": Policy(retries=0)})
    guarded = protect(pool, recovery=recovery)
    owner = otpy.whereis("recovery")
    ref = otpy.monitor(owner)
    os.kill(owner.os_pid, signal.SIGKILL)
    otpy.receive(timeout=DEADLINE, match=lambda m: type(m) is otpy.Down and m.ref == ref)
    with pytest.raises(ValueError):
        guarded.execute("bad_input")  # its report is lost, the call is not
    assert guarded.execute("run", 3) == 6
    deadline = time.monotonic() + DEADLINE
    while otpy.whereis("recovery") in (None, owner):
        assert time.monotonic() < deadline, "the orchestrator did not come back"
    assert isinstance(Recovery("recovery").stats(), dict)  # the replacement answers
    recovery.stop()


def test_the_wait_for_a_free_worker_ends_at_the_deadline(log):
    pool = Pool.start_link(Jobs, args=(log,), size=1, checkout_timeout=30.0, name="busy")
    try:
        me = otpy.self()

        def hold(parent):
            with pool.checkout():
                otpy.send(parent, "holding")
                otpy.receive(timeout=DEADLINE, match=lambda m: m == "release")

        holder = otpy.spawn(hold, me)
        otpy.receive(timeout=DEADLINE, match=lambda m: m == "holding")
        guarded = protect(pool, deadline=0.3)
        began = time.monotonic()
        with pytest.raises(PoolTimeout):
            guarded.execute("run", 1)  # the pool alone would wait 30 s for the worker
        assert time.monotonic() - began < 0.3 + 1.0
        otpy.send(holder, "release")
    finally:
        pool.stop()


def test_aexecute_runs_the_same_chain_from_asyncio(pool, log, tmp_path):
    """Protected.aexecute: the limiter, the breaker and recovery's retry after
    a real SIGKILL (the backoff an asyncio.sleep), as execute; the same counts."""
    import asyncio

    recovery = Recovery.start_link("recovery", {"worker_crashed": Policy(
        retries=2, backoff=0.01, failover=True)})
    db = CircuitBreaker.start_link("db", max_failures=5, reset_after=60)
    api = RateLimiter.start_link("api", algorithm="sliding_window")
    guarded = protect(pool, limiter=(api, "k", 4, 3600), breaker=db, recovery=recovery,
                      deadline=DEADLINE, idempotent={"announce_and_hang"})
    flag = str(tmp_path / "hung-once")

    async def scenario():
        first = await guarded.aexecute("run", 21)
        again = await guarded.aexecute("announce_and_hang", killer(), flag, session="s1")
        with pytest.raises(ValueError):  # the command's own error: given up, not retried
            await guarded.aexecute("bad_input")
        with pytest.raises(RateLimited):  # each attempt a hit: four of four in the hour
            await guarded.aexecute("run", 1)
        return first, again

    try:
        assert asyncio.run(asyncio.wait_for(scenario(), DEADLINE)) == (42, "finished")
        assert runs(log, "hang") == 2 and runs(log, "run") == 1
        stats = recovery.stats()["worker_crashed"]
        assert (stats.errors, stats.retried, stats.recovered) == (1, 1, 1)
        assert db.stats()["state"] == "closed"
    finally:
        for owner in (db, api, recovery):
            owner.stop()
