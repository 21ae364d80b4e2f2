"""Pool workers placed on a Ray cluster (``RayPlacement``), on a cluster of
two one-CPU nodes started here for the module (``ray_cluster``): workers
spread over nodes, an actor's process SIGKILLed with a command in flight
and while idle, a whole node lost, a stand-in SIGKILLed, the pool stopped,
the program SIGKILLed, and 60% of the workers killed under load. Every
check of "no actor left" looks at the actors' processes (psutil) and asks
Ray's state API.

Each worker holds one CPU unless a test says otherwise, so a pool of two
has one worker on each node, and a replacement can start only where a CPU
is free.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import traceback

import psutil
import pytest

ray = pytest.importorskip("ray", reason="needs Ray: pip install -e '.[test]'")
from ray.util.state import get_actor  # noqa: E402  (ray[default]: the state API)

import otpy  # noqa: E402
from otpy.observer import snapshot  # noqa: E402
from otpy.testing import wait_down, wait_event, wait_for  # noqa: E402
from otpy_pool import CommandTimeout, Pool, RayPlacement, WorkerCrashed  # noqa: E402
from otpy_pool.bench import chaos_kill  # noqa: E402
from otpy_pool.testing import ray_cluster  # noqa: E402

from helpers import TESTS, expect  # noqa: E402
from ray_workers import Napper, Where  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.layer("full")]

DEADLINE = 60.0  # Ray takes seconds to see a node lost; a deadline, never a pause
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": str(TESTS)}}  # actors import ray_workers from here
DIED = RayPlacement.ACTOR_DIED


@pytest.fixture(scope="module")
def cluster():
    before = set(glob.glob("/tmp/pymp-*")) | set(glob.glob("/tmp/otpy-ray-*"))
    with ray_cluster(nodes=2, cpus=1, dashboard=True) as local:
        yield local
    # nothing left in /tmp: the cluster's dir, and the dashboard's forkserver's
    # socket dir (it is killed, so its own cleanup never runs) inside it
    assert set(glob.glob("/tmp/pymp-*")) | set(glob.glob("/tmp/otpy-ray-*")) <= before


def start(cluster, size: int = 2, worker: type = Where, **options) -> Pool:
    placement = RayPlacement(address=cluster.address, runtime_env=RUNTIME_ENV,
                             resources=options.pop("resources", None))
    return Pool.start_link(worker, size=size, placement=placement, **options)


def actor_state(cluster, actor_id: str) -> str:
    return get_actor(actor_id, address=cluster.address).state


def gone(cluster, actors: list[tuple]) -> bool:
    """Each (pid, node, actor id): its process has exited and Ray says DEAD."""
    return all(not psutil.pid_exists(pid) and actor_state(cluster, actor) == "DEAD"
               for pid, _, actor in actors)


def execute_and_report(pool: Pool, parent: otpy.Pid, *args, **kwargs) -> None:
    """A caller in a process of its own: sends ("ran", result or exception)."""
    try:
        outcome = pool.execute(*args, **kwargs)
    except Exception as exc:
        outcome = exc
    otpy.send(parent, ("ran", outcome))


def rows(tree: list) -> list:
    return [r for row in tree for r in [row, *rows(row["children"])]]


def test_workers_spread_over_nodes_each_an_actor_its_stand_in_shows(cluster):
    pool = start(cluster)
    here = {sid: pool.execute("where", session=sid) for sid in ("a", "b")}
    assert pool.worker_of("a") != pool.worker_of("b")
    assert {node for _, node, _ in here.values()} == set(cluster.node_ids)
    stand_ins = {w.os_pid for w in pool.workers()}
    assert not {pid for pid, _, _ in here.values()} & stand_ins  # the work runs on the actors
    assert all(pool.execute("same_thread", session=sid) for sid in here)  # init's thread
    behaviours = {r["behaviour"] for r in rows(snapshot()["tree"])
                  if r["os_pid"] in stand_ins}
    assert behaviours == {f"otpy_pool.Worker:Where on Ray actor {actor[:12]}, node {node[:12]}"
                          for _, node, actor in here.values()}
    pool.stop()


def test_sigkill_of_an_actor_fails_its_running_command_and_the_session_replays(
        cluster, tmp_path):
    pool = start(cluster)
    pool.execute("put", "k", 42, session="s")
    old = pool.worker_of("s")
    _, _, old_actor = pool.execute("where", session="s")
    ready = tmp_path / "hanging"
    otpy.spawn(execute_and_report, pool, otpy.self(), "hang", str(ready), session="s")
    actor_pid = int(wait_for(lambda: ready.exists() and ready.read_text(), DEADLINE))
    down = otpy.monitor(old)
    pool.subscribe()
    os.kill(actor_pid, signal.SIGKILL)
    crashed = expect(lambda m: type(m) is tuple and m[0] == "ran", DEADLINE)[1]
    assert isinstance(crashed, WorkerCrashed), crashed
    assert crashed.reason[0] == DIED
    assert "worker process has died" in crashed.reason[1], crashed.reason
    assert wait_down(down, DEADLINE)[0] == DIED  # the stand-in exited with it
    wait_event(pool, "worker_started", DEADLINE)
    assert pool.execute("get", "k", session="s") == 42  # replayed on the new actor
    assert pool.worker_of("s") != old
    assert pool.execute("where", session="s")[2] != old_actor
    status = pool.status()
    assert (status.worker_restarts, status.sessions_recovered, status.workers) == (1, 1, 2)
    pool.stop()


def test_an_idle_actor_killed_ends_its_stand_in_without_a_command(cluster):
    pool = start(cluster)
    pool.execute("put", "k", 7, session="s")
    actor_pid, _, _ = pool.execute("where", session="s")
    down = otpy.monitor(pool.worker_of("s"))
    pool.subscribe()
    os.kill(actor_pid, signal.SIGKILL)
    reason = wait_down(down, DEADLINE)  # seen by the watch: nothing was in flight
    assert reason[0] == DIED and "worker process has died" in reason[1], reason
    wait_event(pool, "worker_started", DEADLINE)
    assert pool.execute("get", "k", session="s") == 7
    pool.stop()


def test_a_lost_node_s_worker_is_replaced_on_another_and_its_session_recovered(cluster):
    pool = start(cluster)  # one worker on each node: each holds its node's only CPU
    for sid, value in (("a", 1), ("b", 2)):
        pool.execute("put", "k", value, session=sid)
    here = {sid: pool.execute("where", session=sid) for sid in ("a", "b")}
    head = cluster.node_ids[0]
    lost = next(sid for sid, (_, node, _) in here.items() if node != head)
    kept = "a" if lost == "b" else "b"
    spare = cluster.add_node()  # the only free CPU: where the replacement must go
    down = otpy.monitor(pool.worker_of(lost))
    kept_worker = pool.worker_of(kept)
    pool.subscribe()
    cluster.remove_node(here[lost][1])
    assert wait_down(down, DEADLINE)[0] == DIED
    wait_event(pool, "worker_started", DEADLINE)
    assert pool.execute("get", "k", session=lost) == (1 if lost == "a" else 2)
    assert pool.execute("where", session=lost)[1] == spare
    assert pool.worker_of(kept) == kept_worker  # the other node's worker was not touched
    assert pool.execute("where", session=kept) == here[kept]
    assert pool.status().sessions_recovered == 1
    pool.stop()


def test_a_stand_in_killed_or_the_pool_stopped_leaves_no_actor(cluster):
    pool = start(cluster)
    here = {sid: pool.execute("where", session=sid) for sid in ("a", "b")}
    assert all(actor_state(cluster, actor) == "ALIVE" for _, _, actor in here.values())
    os.kill(pool.worker_of("a").os_pid, signal.SIGKILL)
    wait_for(lambda: gone(cluster, [here["a"]]), DEADLINE)
    assert psutil.pid_exists(here["b"][0])
    pool.stop()
    wait_for(lambda: gone(cluster, list(here.values())), DEADLINE)


PROGRAM = textwrap.dedent("""
    import json, sys
    import otpy
    from otpy import lowlevel
    lowlevel.start()                    # otpy's node before any of Ray runs here
    import ray
    ray.init(address=sys.argv[1], logging_level="ERROR")
    from otpy_pool import Pool, RayPlacement
    from ray_workers import Where
    # address=None: the cluster this program's own driver is connected to
    placement = RayPlacement(runtime_env={"env_vars": {"PYTHONPATH": sys.argv[2]}})
    pool = Pool.start_link(Where, size=2, placement=placement)
    here = [pool.execute("where", session=sid) for sid in ("a", "b")]
    print(json.dumps({"actors": here, "stand_ins": [w.os_pid for w in pool.workers()]}),
          flush=True)
    sys.stdin.read()                    # until the test kills it
""")


@pytest.mark.system
def test_a_program_sigkilled_leaves_no_actor_and_no_stand_in(cluster):
    program = subprocess.Popen([sys.executable, "-c", PROGRAM, cluster.address, str(TESTS)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=str(TESTS))
    try:
        line = program.stdout.readline()
        assert line, "the program printed nothing"
        started = json.loads(line)
        actors = [tuple(a) for a in started["actors"]]
        assert all(actor_state(cluster, actor) == "ALIVE" for _, _, actor in actors)
    finally:
        program.kill()
        program.wait(DEADLINE)
        program.stdin.close()
        program.stdout.close()
    wait_for(lambda: gone(cluster, actors), DEADLINE)
    assert not [pid for pid in started["stand_ins"] if psutil.pid_exists(pid)]


def test_a_program_that_started_ray_before_otpy_is_told_what_to_do(cluster):
    program = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, ray
        ray.init(address=sys.argv[1], logging_level="ERROR")   # before otpy's node
        from otpy_pool import Pool, RayPlacement
        from ray_workers import Where
        Pool.start_link(Where, size=1, placement=RayPlacement())
    """), cluster.address], capture_output=True, text=True, cwd=str(TESTS), timeout=DEADLINE)
    assert program.returncode != 0
    assert "call otpy.lowlevel.start() before ray.init()" in program.stderr, program.stderr[-3000:]


def test_commands_errors_health_and_the_executor_work_as_on_local_workers(cluster):
    pool = start(cluster, health_interval=0.2)
    with pytest.raises(ValueError, match="boom") as raised:
        pool.execute("fail", "boom", session="s")
    assert "ray_workers.py" in "".join(traceback.format_exception(raised.value))  # its frames
    pool.execute("put", "k", 1, session="s")
    pool.end_session("s")  # a session bound again starts empty, on the actor too
    assert pool.execute("keys", session="s") == []
    actors = {pool.execute("where", session=sid)[0] for sid in ("s", "t")}
    with pool.executor() as executor:  # plain functions run on the actors
        assert {executor.submit(os.getpid).result() for _ in range(4)} <= actors
    pool.subscribe()
    pool.execute("sicken", session="s")  # its health check, on the actor, now fails
    wait_event(pool, "health_failed", DEADLINE)
    pool.stop()


def test_an_init_that_fails_on_the_actor_fails_the_start_with_its_error(cluster):
    with pytest.raises(otpy.StartError, match="init refused"):
        Pool.start_link(Where, args=("refuse",), size=1, placement=RayPlacement(
            address=cluster.address, runtime_env=RUNTIME_ENV))


# ---- an async Worker: an async actor --------------------------------------------------------

def test_an_async_worker_runs_its_max_concurrency_at_once_on_its_async_actor(cluster):
    # the class says one at a time; the pool's option, three: the actor must run three
    pool = start(cluster, size=1, worker=Napper, max_concurrency=3)

    async def three() -> list:
        return await asyncio.gather(*(pool.aexecute("meet", "r", 3, session=f"s{i}")
                                      for i in range(3)))

    pids = asyncio.run(three())  # each returns only once all three are in
    assert len(set(pids)) == 1 and pids[0] != pool.workers()[0].os_pid  # on the actor
    assert pool.execute("get", "k", session="s0") is None  # a plain def command too
    pool.stop()


def test_an_async_command_past_its_deadline_is_cancelled_on_its_actor(cluster):
    pool = start(cluster, size=1, worker=Napper)
    actor = pool.execute("actor", session="s")

    async def late() -> None:
        with pytest.raises(CommandTimeout):
            await pool.aexecute("wait_to_be_cancelled", session="s", timeout=0.5)

    asyncio.run(late())
    assert pool.execute("cancelled_count", session="s") == 1  # it saw CancelledError there
    assert pool.execute("actor", session="s") == actor  # ended in its grace: not replaced
    assert pool.status().worker_restarts == 0
    pool.stop()


def test_an_async_command_that_ignores_its_cancel_has_its_worker_and_actor_killed(
        cluster, tmp_path):
    pool = start(cluster, size=1, worker=Napper)
    ready = tmp_path / "stubborn"
    actor = pool.execute("actor", session="s")
    pool.subscribe()

    async def late() -> None:
        with pytest.raises(CommandTimeout):
            await pool.aexecute("ignore_cancel", str(ready), session="s", timeout=0.5)

    asyncio.run(late())  # after its timeout and the class's cancel_grace
    assert ready.exists()
    wait_event(pool, "worker_started", DEADLINE)
    wait_for(lambda: actor_state(cluster, actor) == "DEAD", DEADLINE)  # gone with its stand-in
    assert pool.execute("actor", session="s") != actor
    assert pool.status().worker_restarts == 1
    pool.stop()


def test_sigkill_of_an_async_actor_fails_each_command_in_flight_and_sessions_replay(
        cluster, tmp_path):
    pool = start(cluster, size=1, worker=Napper, max_concurrency=3)
    pool.execute("put", "k", 42, session="a")
    actor = pool.execute("actor", session="a")
    ready = [tmp_path / f"hanging{i}" for i in range(3)]
    pool.subscribe()

    def actor_pid() -> int:
        pids = {int(wait_for(lambda: f.exists() and f.read_text(), DEADLINE)) for f in ready}
        assert len(pids) == 1, pids
        return pids.pop()

    async def killed_in_flight() -> list:
        hanging = [asyncio.ensure_future(pool.aexecute("hang", str(f), session=f"s{i}"))
                   for i, f in enumerate(ready)]
        os.kill(await asyncio.to_thread(actor_pid), signal.SIGKILL)
        return await asyncio.gather(*hanging, return_exceptions=True)

    outcomes = asyncio.run(killed_in_flight())
    assert all(isinstance(o, WorkerCrashed) and o.reason[0] == DIED for o in outcomes), outcomes
    wait_event(pool, "worker_started", DEADLINE)
    assert pool.execute("get", "k", session="a") == 42  # replayed on the new actor
    assert pool.execute("actor", session="a") != actor
    assert pool.status().worker_restarts == 1
    pool.stop()


@pytest.mark.chaos
def test_sixty_percent_of_the_actors_killed_under_load(cluster):
    # five workers of a fifth of a CPU each, and room for their replacements
    figures = chaos_kill(fraction=0.6, callers=8, calls=150, size=5, placement=RayPlacement(
        address=cluster.address, resources={"CPU": 0.2}))
    print(figures)
    assert figures["callers_lost"] == 0
    assert figures["success_rate"] >= 0.999, figures
    assert figures["charges_run_twice"] == 0
    assert figures["workers_killed"] == 3
    assert figures["worker_restarts"] >= 3
