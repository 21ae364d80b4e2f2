"""isolated_tree: private names, private temp dir, proof that nothing survives."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading

import otpy
import pytest
from otpy.testing import LeakError, isolated_tree

from helpers import expect, idle, others
from servers import Counter, start_stubborn


def test_a_tree_has_a_named_root_supervisor_a_tmp_path_and_private_names():
    with isolated_tree("test_basics", children=[Counter.child_spec(3, name="pool")]) as tree:
        assert otpy.whereis("test_basics") == tree.supervisor
        assert otpy.call("pool", "get") == 3
        assert os.path.isdir(tree.tmp_path)
        extra = tree.start_child(Counter.child_spec(9, name="extra"))
        assert otpy.call("extra", "get") == 9 and extra in tree.processes()
        path = tree.tmp_path
        open(os.path.join(path, "scratch.txt"), "w").close()
    assert otpy.whereis("pool") is None and otpy.whereis("test_basics") is None
    assert not os.path.exists(path)
    assert others() == []


def test_processes_started_inside_belong_to_the_tree_with_their_children():
    with isolated_tree("test_membership") as tree:
        parent = otpy.spawn(lambda: (otpy.spawn_link(idle), otpy.receive()))
        procs = tree.processes()
        assert parent in procs and tree.supervisor in procs
        otpy.exit(parent, "kill")  # its linked child dies with it: nothing leaks


def test_two_trees_use_the_same_names_at_once_in_two_threads():
    barrier = threading.Barrier(2, timeout=30)
    seen = {}
    errors = []

    def run(tag):
        try:
            with isolated_tree("test_same_names", children=[Counter.child_spec(tag, name="pool")]):
                barrier.wait()  # both trees are up, both hold "pool"
                seen[tag] = (otpy.call("pool", "get"), otpy.whereis("pool"))
                barrier.wait()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert seen[1][0] == 1 and seen[2][0] == 2 and seen[1][1] != seen[2][1]


def test_nested_trees_resolve_in_the_innermost():
    with isolated_tree("outer", children=[Counter.child_spec(1, name="svc")]):
        with isolated_tree("inner", children=[Counter.child_spec(2, name="svc")]):
            assert otpy.call("svc", "get") == 2
        assert otpy.call("svc", "get") == 1


def test_a_leaked_process_is_killed_and_reported():
    with pytest.raises(LeakError, match="processes still alive") as info:
        with isolated_tree("test_leaky"):
            straggler = otpy.spawn(idle)
    assert not otpy.is_alive(straggler)
    assert repr(straggler) in str(info.value)


def test_a_leaked_name_is_removed_and_reported():
    with pytest.raises(LeakError, match="names still registered: \\['mine'\\]"):
        with isolated_tree("test_leaky_name"):
            otpy.register("mine")  # the test's own process, in the tree's namespace
    assert otpy.whereis("mine") is None
    assert otpy.process_info(otpy.self())["name"] is None


def _make_segment(path: str, parent: otpy.Pid, how: str) -> None:
    """Create a /dev/shm file and hold it (open, or mapped only), until told to stop."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    if how == "mapped":
        mapping = mmap.mmap(fd, 4096)  # kept mapped while this function waits below
        os.close(fd)
    otpy.send(parent, ("made", path))
    otpy.receive()
    if how == "mapped":
        mapping.close()


@pytest.mark.parametrize("how", ["open", "mapped"])
def test_a_segment_a_tree_process_leaves_is_removed_and_reported(how):
    path = f"/dev/shm/otpy-test-{os.getpid()}-{how}"
    segment = os.path.basename(path)
    with pytest.raises(LeakError, match=f"shared memory segments: \\['{segment}'\\]"):
        with isolated_tree("test_leaky_shm") as tree:
            tree.start_child(otpy.ChildSpec("maker", otpy.spawn_link,
                                            args=(_make_segment, path, otpy.self(), how)))
            otpy.receive(timeout=10, match=lambda m: m == ("made", path))
    assert not os.path.exists(path)


def test_someone_elses_segment_is_neither_removed_nor_reported():
    path = f"/dev/shm/otpy-test-{os.getpid()}-other"
    try:
        with isolated_tree("test_other_shm"):
            # another program creates a segment while the tree is open
            subprocess.run([sys.executable, "-c", f"open({path!r}, 'w').close()"], check=True)
        assert os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_an_exception_inside_is_never_hidden_by_the_cleanup():
    with pytest.raises(ZeroDivisionError) as info:
        with isolated_tree("test_failing"):
            otpy.spawn(idle)
            1 / 0  # noqa: B018 - the exception is the point
    assert any("processes still alive" in note for note in info.value.__notes__)
    assert others() == []


def test_a_tree_whose_child_fails_to_start_cleans_up_and_raises():
    with pytest.raises(otpy.StartError):
        with isolated_tree("test_bad_child", children=[Counter.child_spec(name="ok"),
                                                       otpy.ChildSpec("bad", _boom)]):
            pass
    assert otpy.whereis("ok") is None and others() == []


def _boom():
    raise RuntimeError("cannot start")


def test_a_root_supervisor_that_cannot_stop_is_killed_after_stop_timeout():
    # a child that ignores "shutdown" with shutdown="infinity": the supervisor
    # would wait for it forever, and so would the tree's exit
    me = otpy.self()
    with pytest.raises(LeakError, match="did not stop within 0.5s") as info:
        with isolated_tree("test_stuck", stop_timeout=0.5) as tree:
            tree.start_child(otpy.ChildSpec("stuck", start_stubborn, args=(me,),
                                            shutdown="infinity"))
            stuck = expect(lambda m: m[0] == "stubborn")[1]
    # it traps exits, so even its supervisor's death left it running: killed too
    assert f"processes still alive: [{stuck!r}]" in str(info.value)
    assert not otpy.is_alive(stuck) and others() == []
    with pytest.raises(ValueError, match="stop_timeout"):
        isolated_tree("t", stop_timeout=0)
    with pytest.raises(TypeError, match="stop_timeout"):
        isolated_tree("t", stop_timeout=True)


def test_bad_tree_names_are_rejected():
    with pytest.raises(TypeError, match="name"):
        isolated_tree("")


def test_the_otpy_tree_fixture(otpy_tree):
    assert otpy.whereis(otpy_tree.name) == otpy_tree.supervisor
    assert "test_the_otpy_tree_fixture" in otpy_tree.name
    otpy_tree.start_child(Counter.child_spec(5, name="fixture_counter"))
    assert otpy.call("fixture_counter", "get") == 5
