"""otpy_pool's figures through otpy.metrics: a pool that runs commands and
loses a worker to a real SIGKILL, scraped over HTTP and parsed by
prometheus_client's parser, agrees with ``status()``; its counts go on across
a killed server; a breaker, a limiter and a recovery orchestrator show what
their own stats say; the same figures reach OpenTelemetry's in-memory reader.
"""

from __future__ import annotations

import os
import signal

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import otpy
import otpy.metrics
from breakers import fail
from breakers import start as start_breaker
from helpers import expect, in_thread, sigkill
from metrics_helpers import Scrape, scrape, series, value
from otpy.testing import wait_for
from otpy_pool import (CircuitOpen, Pool, PoolStatus, RateLimiter, Recovery, UnknownCommand,
                       WorkerCrashed, protect)
from pool_helpers import no_stale_events, start  # noqa: F401 (a fixture, by name)

pytestmark = [pytest.mark.layer("full"), pytest.mark.usefixtures("no_stale_events")]

OUTCOMES = ("ok", "error", "crashed")
POOL_LABELS = {"pool", "command", "outcome", "state", "le"}


@pytest.fixture
def server():
    with otpy.metrics.serve(0) as running:
        yield running


def commands(figures: Scrape, pool: str) -> dict[tuple[str, str], float]:
    """(command, outcome) -> count, for one pool."""
    out = {}
    for labels, n in series(figures, "otpy_pool_commands_total").items():
        d = dict(labels)
        if d["pool"] == pool:
            out[(d["command"], d["outcome"])] = n
    return out


def disagreement(figures: Scrape, pool: Pool, status: PoolStatus) -> list[str]:
    """How the scrape differs from status() (empty: they agree)."""
    counts = commands(figures, pool.name)
    p = {"pool": pool.name}
    workers = {s: value(figures, "otpy_pool_workers", pool=pool.name, state=s)
               for s in ("idle", "busy", "leaving")}
    pairs = {
        "total_commands": (sum(counts.values()), status.total_commands),
        "errors": (sum(n for (_, o), n in counts.items() if o != "ok"), status.errors),
        "worker_restarts": (value(figures, "otpy_pool_worker_restarts_total", **p),
                            status.worker_restarts),
        "sessions_recovered": (value(figures, "otpy_pool_session_replays_total", **p),
                               status.sessions_recovered),
        "sessions_lost": (value(figures, "otpy_pool_sessions_lost_total", **p),
                          status.sessions_lost),
        "timeouts": (value(figures, "otpy_pool_timeouts_total", **p), status.timeouts),
        "sessions": (value(figures, "otpy_pool_sessions", **p), status.sessions),
        "queued": (value(figures, "otpy_pool_queue_depth", **p), status.queued),
        "size": (value(figures, "otpy_pool_size", **p), status.size),
        "idle": (workers["idle"], status.idle),
        "busy": (workers["busy"], status.busy),
        "workers": (sum(workers.values()), status.workers),
        "overflow": (value(figures, "otpy_pool_overflow_workers", **p), status.overflow),
        "starting": (value(figures, "otpy_pool_shortfall", **p), status.starting),
    }
    return [f"{k}: scraped {a}, status {b}" for k, (a, b) in pairs.items() if a != b]


def agrees(server, pool: Pool) -> Scrape:
    """A scrape that agrees with status() (a worker counts a command right
    after its reply: the scrape may come a moment before)."""
    def attempt():
        figures = scrape(server.url)
        return figures if not disagreement(figures, pool, pool.status()) else None
    try:
        return wait_for(attempt)
    except Exception:
        figures = scrape(server.url)
        raise AssertionError(disagreement(figures, pool, pool.status())) from None


def test_a_pool_with_a_sigkilled_worker_scraped_over_http_agrees_with_status(server):
    me = otpy.self()
    pool = start(size=2, name="metered")
    pool.execute("add", "one", session="a")
    pool.execute("add", "two", session="a")
    for _ in range(2):
        with pytest.raises(KeyError):
            pool.execute("fail", "k")
    with pytest.raises(UnknownCommand):
        pool.execute("no_such_command")
    with pool.checkout():  # a worker checked out: busy in both
        figures = agrees(server, pool)
        assert value(figures, "otpy_pool_workers", pool="metered", state="busy") == 1
    running = in_thread(pool.execute, "hold", me, "x", session="a")
    expect(lambda m: m[:2] == ("holding", "x"))
    os.kill(pool.worker_of("a").os_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed):
        running()
    assert pool.execute("notes", session="a") == ["one", "two"]  # replayed on a new worker
    figures = agrees(server, pool)

    assert commands(figures, "metered") == {
        ("add", "ok"): 2, ("add", "error"): 0, ("add", "crashed"): 0,
        ("fail", "ok"): 0, ("fail", "error"): 2, ("fail", "crashed"): 0,
        ("(unknown)", "ok"): 0, ("(unknown)", "error"): 1, ("(unknown)", "crashed"): 0,
        ("hold", "ok"): 0, ("hold", "error"): 0, ("hold", "crashed"): 1,
        ("notes", "ok"): 1, ("notes", "error"): 0, ("notes", "crashed"): 0}
    p = {"pool": "metered"}
    assert value(figures, "otpy_pool_worker_restarts_total", **p) == 1
    assert value(figures, "otpy_pool_session_replays_total", **p) == 1
    assert value(figures, "otpy_pool_worker_starts_total", **p) == 3
    assert value(figures, "otpy_pool_worker_start_failures_total", **p) == 0
    assert value(figures, "otpy_pool_commands_running", **p) == 0
    assert value(figures, "otpy_pool_degraded", **p) == 0
    # the histogram counts the commands that ended, each in its buckets
    for command, ended in (("add", 2), ("fail", 2), ("notes", 1), ("(unknown)", 1),
                           ("hold", 0)):  # a crashed command never ended
        labels = {"pool": "metered", "command": command}
        assert value(figures, "otpy_pool_command_duration_seconds_count", **labels) == ended
        assert value(figures, "otpy_pool_command_duration_seconds_bucket", le="+Inf",
                     **labels) == ended
        assert (value(figures, "otpy_pool_command_duration_seconds_sum", **labels) > 0) == \
            (ended > 0)
    assert ("otpy_pool_command_duration_seconds_count",  # never run: no series
            frozenset({("pool", "metered"), ("command", "ping")})) not in figures
    names = {label for (name, labels) in figures if name.startswith("otpy_pool")
             for label, _ in labels}
    assert names <= POOL_LABELS  # never a session id or a pid
    pool.stop()
    gone = scrape(server.url)
    assert not [k for k in gone if dict(k[1]).get("pool") == "metered"]


def test_a_running_command_and_a_queued_caller_are_scraped(server):
    me = otpy.self()
    pool = start(size=1, name="narrow")
    held = in_thread(pool.execute, "hold", me, "h", session="s")
    expect(lambda m: m[:2] == ("holding", "h"))
    with pool.checkout():
        waiting = in_thread(pool.execute, "ping")
        wait_for(lambda: pool.status().queued == 1)
        figures = agrees(server, pool)
        assert value(figures, "otpy_pool_commands_running", pool="narrow") == 1
        assert value(figures, "otpy_pool_queue_depth", pool="narrow") == 1
    otpy.send(pool.worker_of("s"), ("release", "h"))
    held()
    waiting()
    pool.stop()


def test_a_claimed_command_is_idle_in_the_gauge_and_busy_in_status(server):
    """As docs/metrics.md says: the gauge counts checkouts (it is written when
    the server handles a message, and a claim sends none); status() asks the
    claims page's locks."""
    me = otpy.self()
    pool = start(size=1, name="claimed")
    pool.execute("ping")  # (this process asks where the claims page is, once)
    held = in_thread(pool.execute, "hold", me, "c")
    worker = expect(lambda m: m[:2] == ("holding", "c"))[2]
    try:
        assert (pool.status().busy, pool.status().idle) == (1, 0)
        figures = scrape(server.url)
        assert value(figures, "otpy_pool_workers", pool="claimed", state="busy") == 0
        assert value(figures, "otpy_pool_workers", pool="claimed", state="idle") == 1
    finally:
        otpy.send(worker, ("release", "c"))
    assert held() == "c"
    pool.stop()


def test_counts_go_on_across_a_killed_pool_server(server):
    pool = start(size=2, name="resilient")
    for i in range(3):
        pool.execute("add", i, session="s")
    before = commands(agrees(server, pool), "resilient")[("add", "ok")]
    old = otpy.whereis("resilient")
    sigkill(old)
    wait_for(lambda: otpy.whereis("resilient") not in (None, old))
    pool.execute("add", 3, session="s")  # the adopted worker writes to the same slot

    def counted():  # once the new server has said where its page is
        figures = scrape(server.url)
        return figures if commands(figures, "resilient").get(("add", "ok")) == before + 1 \
            else None

    after = wait_for(counted)
    assert value(after, "otpy_pool_worker_starts_total", pool="resilient") == 2  # none anew
    assert value(after, "otpy_pool_workers", pool="resilient", state="idle") == 2
    pool.stop()


def test_breaker_limiters_and_recovery_as_scraped(server):
    db = start_breaker("db", max_failures=1, reset_after=60.0)
    fail(db)
    with pytest.raises(CircuitOpen):
        db.call(lambda: None)
    fixed = RateLimiter.start_link("fixed")
    sliding = RateLimiter.start_link("sliding", algorithm="sliding_window")
    for limiter in (fixed, sliding):
        assert [limiter.hit("k", 2, 60.0).allowed for _ in range(3)] == [True, True, False]
        limiter.inspect("k", 2, 60.0)  # counts nothing
    pool = start(size=1, name="guarded")
    recovery = Recovery.start_link("rec")
    with pytest.raises(KeyError):
        protect(pool, recovery=recovery).execute("fail", "k")
    stats = wait_for(lambda: recovery.stats() or None)
    figures = wait_for(lambda: (f := scrape(server.url)) and
                       series(f, "otpy_recovery_gave_up_total") and f)

    assert db.stats()["state"] == "open"
    assert {dict(k)["state"]: v for k, v in series(figures, "otpy_breaker_state").items()
            if dict(k)["breaker"] == "db"} == {"closed": 0, "open": 1, "half_open": 0,
                                              "disabled": 0}
    assert value(figures, "otpy_breaker_trips_total", breaker="db") == db.stats()["opened"] == 1
    assert value(figures, "otpy_breaker_calls_refused_total", breaker="db") == \
        db.stats()["rejected"] == 1
    for name in ("fixed", "sliding"):
        assert value(figures, "otpy_limiter_hits_total", limiter=name, decision="allowed") == 2
        assert value(figures, "otpy_limiter_hits_total", limiter=name, decision="denied") == 1
    for cls, counted in stats.items():
        for field in ("errors", "retried", "recovered", "failed_over", "fell_back", "gave_up"):
            assert value(figures, f"otpy_recovery_{field}_total", recovery="rec",
                         **{"class": cls}) == getattr(counted, field)
    pool.stop()
    recovery.stop()
    fixed.stop()
    sliding.stop()


def test_a_breakers_refusals_outlive_the_process_that_counted_them(server):
    db = start_breaker("shared-db", max_failures=1, reset_after=60.0)
    fail(db)

    def refused_once(parent):
        try:
            db.call(lambda: None)
        except CircuitOpen:
            otpy.send(parent, "refused")

    otpy.spawn(refused_once, otpy.self())
    expect(lambda m: m == "refused")
    wait_for(lambda: db.stats()["rejected"] == 1)
    assert value(scrape(server.url), "otpy_breaker_calls_refused_total",
                 breaker="shared-db") == 1


def test_the_pools_figures_through_opentelemetry():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = otpy.metrics.instrument(provider)
    pool = start(size=1, name="otel-pool")
    try:
        pool.execute("add", "x", session="s")
        with pytest.raises(KeyError):
            pool.execute("fail", "k")

        def points():
            out = {}
            for rm in reader.get_metrics_data().resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        out[m.name] = {frozenset(p.attributes.items()): p.value
                                       for p in m.data.data_points}
            return out

        def settled():
            got = points()
            commands = got.get("otpy_pool_commands", {})
            ok = commands.get(frozenset({("pool", "otel-pool"), ("command", "add"),
                                         ("outcome", "ok")}))
            return got if ok == 1 else None

        got = wait_for(settled)
        status = pool.status()
        mine = {k: v for k, v in got["otpy_pool_commands"].items()
                if dict(k)["pool"] == "otel-pool"}
        assert sum(mine.values()) == status.total_commands == 2
        assert got["otpy_pool_command_duration_seconds_count"][
            frozenset({("pool", "otel-pool"), ("command", "fail")})] == 1
        assert got["otpy_pool_workers"][frozenset({("pool", "otel-pool"),
                                                   ("state", "idle")})] == status.idle
    finally:
        pool.stop()
        instruments.close()
        provider.shutdown()


def test_a_pool_with_a_long_name_is_scraped(server):
    """A memfd's name is at most 249 bytes: the page's is cut, the label is not."""
    name = "pool-é" + "x" * 300
    pool = start(size=1, name=name)
    pool.execute("ping")
    figures = agrees(server, pool)
    assert commands(figures, name)[("ping", "ok")] == 1
    pool.stop()
