"""otpy_pool's figures for otpy.metrics: pools, breakers, rate limiters and
recovery orchestrators, from what a reading of the node already has.

otpy.metrics finds this source through the ``otpy.metrics_sources`` entry
point (otpy never imports otpy_pool), in this program and in ``python -m
otpy.observer --prometheus`` outside it. Each part says where its figures
are in the observer's page (``row["meta"]``, annotated by its process): a
pool's server and a breaker's owner name a page of shared memory their
supervisor holds, a limiter's owner the page its counts are in, a recovery
orchestrator annotates its counts themselves (one note per call that saw an
error). A scrape maps those pages read-only and never calls a process.
Importing this module imports neither prometheus_client nor OpenTelemetry.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from typing import Callable, Iterable, Iterator, Mapping

from otpy.metrics import Histogram, Metric, NodeView, Sample

from . import _pool_meter as pm
from ._breaker_machine import STATES as BREAKER_STATES

_P = ("pool",)
POOL_METRICS = (
    Metric("otpy_pool_size", "gauge", "Regular workers the pool keeps (its size option).", _P),
    Metric("otpy_pool_workers", "gauge",
           "Workers alive, by state: idle (not checked out; a session's command or a "
           "claimed session-less one does not check out), busy (checked out: checkout(), "
           "or a session-less execute the server handed out), leaving (retiring or "
           "killed, not yet gone).",
           ("pool", "state")),
    Metric("otpy_pool_overflow_workers", "gauge", "Overflow workers alive.", _P),
    Metric("otpy_pool_shortfall", "gauge",
           "Regular workers the pool lacks: being started, or retried with backoff.", _P),
    Metric("otpy_pool_degraded", "gauge",
           "1 while the pool is below its size because starting workers fails.", _P),
    Metric("otpy_pool_commands_running", "gauge", "Commands running on the workers now.", _P),
    Metric("otpy_pool_queue_depth", "gauge", "Callers waiting for a free worker.", _P),
    Metric("otpy_pool_sessions", "gauge", "Sessions the pool knows.", _P),
    Metric("otpy_pool_commands_total", "counter",
           "Commands by outcome: ok, error (it raised, its value could not be sent, or its "
           "session was lost), crashed (its worker died or was killed while running it).",
           ("pool", "command", "outcome")),
    Metric("otpy_pool_command_duration_seconds", "histogram",
           "How long commands that ended (ok or error) ran on their worker.",
           ("pool", "command"), "s"),
    Metric("otpy_pool_session_replays_total", "counter",
           "Sessions recovered: re-bound to a new worker by a replay that succeeded.", _P),
    Metric("otpy_pool_sessions_lost_total", "counter", "Sessions whose replay failed.", _P),
    Metric("otpy_pool_worker_starts_total", "counter", "Workers started.", _P),
    Metric("otpy_pool_worker_start_failures_total", "counter", "Worker starts that failed.", _P),
    Metric("otpy_pool_worker_restarts_total", "counter",
           "Workers replaced after an unplanned death or a command deadline's kill.", _P),
    Metric("otpy_pool_timeouts_total", "counter",
           "Callers that timed out: waiting for a worker (PoolTimeout) or for a command "
           "(CommandTimeout).", _P),
)
_B = ("breaker",)
BREAKER_METRICS = (
    Metric("otpy_breaker_state", "gauge",
           "1 for the breaker's state now (closed, open, half_open, disabled), 0 for the others.",
           ("breaker", "state")),
    Metric("otpy_breaker_trips_total", "counter", "Times the breaker opened.", _B),
    Metric("otpy_breaker_calls_refused_total", "counter",
           "Calls refused (CircuitOpen) without running.", _B),
)
LIMITER_METRICS = (
    Metric("otpy_limiter_hits_total", "counter",
           "Hits by decision: allowed or denied (memory storage only).",
           ("limiter", "decision")),
)
RECOVERY_FIELDS = ("errors", "retried", "recovered", "failed_over", "fell_back", "gave_up")
_RECOVERY_HELP = {
    "errors": "Protected calls that saw an error of this class at least once.",
    "retried": "... and were retried after it.",
    "recovered": "... and then succeeded.",
    "failed_over": "... and were retried on another worker.",
    "fell_back": "Protected calls that ended in a fallback, by their last error's class.",
    "gave_up": "Protected calls whose error reached the caller, by their last error's class.",
}
RECOVERY_METRICS = tuple(
    Metric(f"otpy_recovery_{f}_total", "counter", _RECOVERY_HELP[f], ("recovery", "class"))
    for f in RECOVERY_FIELDS)


class PoolSource:
    """otpy_pool's source for otpy.metrics (see the module's docstring)."""

    metrics = POOL_METRICS + BREAKER_METRICS + LIMITER_METRICS + RECOVERY_METRICS

    def collect(self, view: NodeView) -> Mapping[str, Iterable[Sample]]:
        out: dict[str, list[Sample]] = {m.name: [] for m in self.metrics}
        readers: dict[str, Callable[[NodeView, dict, dict], None]] = {
            "otpy_pool": _pool, "otpy_breaker": _breaker, "otpy_limiter": _limiter,
            "otpy_recovery": _recovery}
        for row in view.rows:
            meta = row["meta"]
            for key, reader in readers.items():
                if key in meta:
                    try:
                        reader(view, meta, out)
                    except (OSError, ValueError):  # a part starting or stopping as it is read
                        continue  # (each reads before it adds a sample): left out this once
        return out

    def __repr__(self) -> str:
        return "<otpy_pool metrics source>"


def source() -> PoolSource:
    """The entry point otpy.metrics loads."""
    return PoolSource()


@contextlib.contextmanager
def _mapped(view: NodeView, os_pid: int, memfd: str) -> Iterator[memoryview | None]:
    """A part's page as words, mapped read-only for one reading (None: it is
    gone, or freed because its part is stopping)."""
    try:
        fd = view.open_memfd(os_pid, memfd)
    except OSError:
        yield None
        return
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else None
    finally:
        os.close(fd)
    if mapping is None:
        yield None
        return
    words = memoryview(mapping).cast("q")
    try:
        yield words
    finally:
        words.release()
        mapping.close()


def _pool(view: NodeView, meta: dict, out: dict[str, list[Sample]]) -> None:
    name = meta["otpy_pool"]
    commands = meta["otpy_pool_commands"].split(",")
    with _mapped(view, meta["otpy_pool_page"], pm.memfd_name(name)) as words:
        if words is None:
            return
        reading = pm.read(words, commands)
    f, p = reading["figures"], (name,)
    for metric, key in (("size", "size"), ("overflow_workers", "overflow"),
                        ("shortfall", "shortfall"), ("degraded", "degraded"),
                        ("commands_running", "running"), ("queue_depth", "queued"),
                        ("sessions", "sessions"), ("session_replays_total", "sessions_recovered"),
                        ("sessions_lost_total", "sessions_lost"),
                        ("worker_starts_total", "worker_starts"),
                        ("worker_start_failures_total", "worker_start_failures"),
                        ("worker_restarts_total", "worker_restarts"),
                        ("timeouts_total", "timeouts")):
        out["otpy_pool_" + metric].append(Sample(p, f[key]))
    for state in ("idle", "busy", "leaving"):
        out["otpy_pool_workers"].append(Sample((name, state), f[state]))
    _pool_commands(name, reading["commands"], out)


def _pool_commands(name: str, commands: dict, out: dict[str, list[Sample]]) -> None:
    """Per command: its outcomes (once it ran at all) and its histogram."""
    for command, (ok, error, crashed, sum_ns, buckets) in commands.items():
        if not (ok or error or crashed):
            continue  # never run: no series (the table's every name would be noise)
        for outcome, n in (("ok", ok), ("error", error), ("crashed", crashed)):
            out["otpy_pool_commands_total"].append(Sample((name, command, outcome), n))
        cumulative, running = [], 0
        for bound, n in zip((*pm.BOUNDS, float("inf")), buckets):
            running += n
            cumulative.append((bound, running))
        out["otpy_pool_command_duration_seconds"].append(
            Sample((name, command), Histogram(tuple(cumulative), sum_ns / 1e9)))


def _breaker(view: NodeView, meta: dict, out: dict[str, list[Sample]]) -> None:
    from ._breaker_owner import NAMES, SLOT_BASE, SLOT_WIDTH, SLOTS, W_STATE, W_TRIPS

    name = meta["otpy_breaker"]
    with _mapped(view, meta["otpy_breaker_page"], f"otpy-breaker:{name}") as words:
        if words is None:
            return
        state = NAMES.get(words[W_STATE])
        trips = words[W_TRIPS]
        refused = sum(words[SLOT_BASE + 1:SLOT_BASE + SLOT_WIDTH * SLOTS:SLOT_WIDTH])
    if state is None:  # its owner stopped (or is being restarted)
        return
    for s in BREAKER_STATES:
        out["otpy_breaker_state"].append(Sample((name, s), int(s == state)))
    out["otpy_breaker_trips_total"].append(Sample((name,), trips))
    out["otpy_breaker_calls_refused_total"].append(Sample((name,), refused))


def _limiter(view: NodeView, meta: dict, out: dict[str, list[Sample]]) -> None:
    name = meta["otpy_limiter"]
    if "otpy_limiter_memfd" not in meta:  # Redis storage: its counts are not kept here
        return
    at = meta["otpy_limiter_at"]
    with _mapped(view, meta["otpy_limiter_holder"], meta["otpy_limiter_memfd"]) as words:
        if words is None:
            return
        allowed, denied = words[at], words[at + 1]
    out["otpy_limiter_hits_total"].append(Sample((name, "allowed"), allowed))
    out["otpy_limiter_hits_total"].append(Sample((name, "denied"), denied))


def _recovery(view: NodeView, meta: dict, out: dict[str, list[Sample]]) -> None:
    name = meta["otpy_recovery"]
    counts: dict[str, list[int]] = json.loads(meta.get("otpy_recovery_counts") or "{}")
    for cls, values in counts.items():
        for field, n in zip(RECOVERY_FIELDS, values):
            out[f"otpy_recovery_{field}_total"].append(Sample((name, cls), n))
