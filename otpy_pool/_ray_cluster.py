"""A Ray cluster of several nodes on this machine, for tests and benchmarks
of ``RayPlacement`` (``otpy_pool.testing.ray_cluster``).

Ray's own test cluster (``ray.cluster_utils.Cluster``) does the work; what
this adds is what a test suite needs from it: the cluster's files (and
its address file, which Ray's "auto" reads) in a temporary directory of its
own, not Ray's shared ``/tmp/ray``, removed at exit; and no process of the
cluster left behind once it has stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from unittest import mock
from typing import Any, Iterator

import psutil

from otpy import lowlevel

from ._ray import INSTALL_HINT


def _cluster_processes() -> list[psutil.Process]:
    """This program's descendants outside otpy's (the zygote's subtree)."""
    zygote = lowlevel.zygote_os_pid()
    found = []
    for child in psutil.Process().children():
        if child.pid == zygote:
            continue
        found.append(child)
        with contextlib.suppress(psutil.Error):
            found += child.children(recursive=True)
    return found


class LocalCluster:
    """A running ``ray_cluster``: its ``address`` (for ``RayPlacement``), its
    nodes, and nodes to add and lose."""

    def __init__(self, cluster: Any, cpus: float, directory: str) -> None:
        self.cluster = cluster  # Ray's ray.cluster_utils.Cluster
        self.address: str = cluster.address
        self.cpus = cpus
        self.directory = directory

    @property
    def node_ids(self) -> list[str]:
        """The nodes alive, the head first."""
        return [node.node_id for node in [self.cluster.head_node, *self.cluster.worker_nodes]]

    def add_node(self) -> str:
        """Start one more node (as many CPUs as the others); its node id."""
        return self.cluster.add_node(num_cpus=self.cpus, temp_dir=self.directory).node_id

    def remove_node(self, node_id: str) -> None:
        """Lose a node as a machine is lost: its processes killed, nothing
        told first. The head cannot be removed (the cluster is it)."""
        for node in self.cluster.worker_nodes:
            if node.node_id == node_id:
                self.cluster.remove_node(node, allow_graceful=False)
                return
        raise ValueError(f"{node_id!r} is not a node of this cluster that can be removed "
                         f"(the head cannot be)")


@contextlib.contextmanager
def _ray_temp_dir() -> Iterator[str]:
    """A directory for the cluster's files, Ray's default temp dir for this
    program meanwhile (so the address file Ray's "auto" reads goes there
    too, not into /tmp/ray), and the temp dir of the processes the cluster
    starts (the dashboard's multiprocessing forkserver leaves its socket
    directory behind when the cluster kills it); removed at exit."""
    # short: Ray's socket paths live under it and must stay under 108 bytes
    top = tempfile.mkdtemp(prefix="otpy-ray-", dir="/tmp")
    directory = os.path.join(top, "ray")
    os.mkdir(directory)
    tempfile.gettempdir()  # this program's own stays what it was (it is cached)
    try:
        with mock.patch.dict(os.environ, {"RAY_TMPDIR": top, "TMPDIR": top}):
            yield directory
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _reap(processes: list[psutil.Process]) -> None:
    """Wait for the cluster's processes to exit; kill those still there after 10 s."""
    _, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def ray_cluster(nodes: int = 2, cpus: float = 1, dashboard: bool = False) -> Iterator[LocalCluster]:
    """Start a Ray cluster of ``nodes`` nodes of ``cpus`` logical CPUs each
    on this machine (Ray's own test cluster): a ``LocalCluster``.
    ``dashboard=True`` starts Ray's dashboard, which its state API
    (``ray.util.state``) needs (``ray[default]``). At exit the cluster is
    shut down, its processes are waited for (killed after 10 s) and its
    directory is removed. otpy's node is started first: its processes must
    not be forks of a process that runs Ray's threads."""
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        raise ImportError(f"ray_cluster needs Ray, which is not installed: {INSTALL_HINT}") \
            from None
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise ValueError(f"nodes must be an int >= 1, not {nodes!r}")
    lowlevel.start()
    before = {p.pid for p in _cluster_processes()}
    with _ray_temp_dir() as directory:
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
                "num_cpus": cpus, "include_dashboard": dashboard, "temp_dir": directory})
            local = LocalCluster(cluster, cpus, directory)
            for _ in range(nodes - 1):
                local.add_node()
            yield local
        finally:
            started = [p for p in _cluster_processes() if p.pid not in before]
            if cluster is not None:
                cluster.shutdown()
            _reap(started)
