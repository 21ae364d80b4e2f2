"""The pytest plugin, run for real in a separate pytest process."""

from __future__ import annotations

pytest_plugins = ["pytester"]

LEAKY = '''
import otpy

def idle():
    otpy.receive()

def test_leaks():
    otpy.spawn(idle)

def test_clean(otpy_tree):
    assert otpy.whereis(otpy_tree.name) == otpy_tree.supervisor
'''


def test_plugin_reports_leaks_and_provides_the_fixture(pytester):
    pytester.makepyfile(test_sample=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test left otpy processes running (killed now)*"])


def test_plugin_registers_the_markers(pytester):
    result = pytester.runpytest_subprocess("--markers")
    for marker in ("unit", "integration", "system", "performance", "chaos"):
        result.stdout.fnmatch_lines([f"@pytest.mark.{marker}:*"])


def test_leak_check_can_warn_instead(pytester):
    pytester.makepyfile(test_sample=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--otpy-leaks=warn")
    result.assert_outcomes(passed=2, warnings=1)


CRASHING = '''
import otpy

class Server(otpy.GenServer):
    def handle_cast(self, request):
        raise RuntimeError("the server fell over")

def crash_a_child(tree):
    pid = tree.start_child(Server.child_spec(name="server"))
    ref = otpy.monitor(pid)
    otpy.cast("server", "crash")
    otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
    otpy.Supervisor.which_children(tree.supervisor)

def test_passes(otpy_tree):
    crash_a_child(otpy_tree)

def test_fails(otpy_tree):
    crash_a_child(otpy_tree)
    assert False, "the test itself failed"
'''


def test_logs_are_quiet_for_a_passing_test_and_shown_for_a_failing_one(pytester):
    pytester.makepyfile(test_sample=CRASHING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-k", "passes")
    result.assert_outcomes(passed=1)
    output = result.stdout.str() + result.stderr.str()  # -s: nothing is captured
    assert "crash report" not in output and "child started" not in output

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "fails")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*- otpy log (call) -*",
        "*crash report*child_id=server*reason=\"RuntimeError('the server fell over')\"*",
        "*raise RuntimeError(\"the server fell over\")*",
        "*child restarted*child_id=server*restarts=1*",
    ])
    assert "test_passes" not in result.stdout.str()


def test_logs_can_be_left_on_stderr(pytester):
    pytester.makepyfile(test_sample=CRASHING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-k", "passes",
                                           "--otpy-log=stderr")
    result.assert_outcomes(passed=1)
    assert "crash report" in result.stderr.str()


OWNED = '''
import otpy

class Server(otpy.GenServer):
    def handle_call(self, request, caller):
        return request

def stubborn(parent):
    otpy.trap_exit(True)
    otpy.send(parent, "trapping")
    while True:
        otpy.receive()  # ignores the shutdown signal

def test_started_in_the_fixture(otpy_tree):
    Server.start_link(name="server")
    otpy.spawn(Server.start_link)
    assert otpy.call("server", "hi") == "hi"

def test_one_that_will_not_stop(otpy_tree):
    otpy.spawn(stubborn, otpy.self())
    otpy.receive(timeout=10, match=lambda m: m == "trapping")
'''


def test_the_fixture_owns_what_the_test_starts_in_it(pytester):
    pytester.makepyfile(test_sample=OWNED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR*test_one_that_will_not_stop*"])
    result.stdout.fnmatch_lines(["*processes that did not stop on shutdown*"])
    assert "test_started_in_the_fixture" not in result.stdout.str().split("short test summary")[-1]
