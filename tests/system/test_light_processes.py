"""What ``import otpy`` loads, and what the zygote (so every process) holds:
only what a process needs to run. structlog (with rich and asyncio), dill,
tblib and psutil are loaded where they are first used (issue 25)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import helpers

# Loaded at first use, never by ``import otpy`` nor by a quiet node's zygote.
AT_FIRST_USE = {"structlog", "rich", "asyncio", "ssl", "dill", "tblib", "psutil", "pygments",
                "multiprocess", "otpy.observer"}


def loaded(modules: list[str]) -> set[str]:
    return {name for name in AT_FIRST_USE
            if any(m == name or m.startswith(name + ".") for m in modules)}


def run(program: str, *args: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTPY_LOG")}
    out = subprocess.run([sys.executable, "-c", program, str(helpers.TESTS), *args],
                         capture_output=True, text=True, timeout=60, env=environment)
    assert out.returncode == 0, out.stderr
    return out


def test_import_otpy_loads_none_of_them():
    out = run("import json, sys\nimport otpy\nprint(json.dumps(sorted(sys.modules)))")
    modules = json.loads(out.stdout)
    assert loaded(modules) == set()
    assert "otpy._runtime.zygote" not in modules  # the node's start imports it


PROGRAM = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import otpy
    from helpers import send_loaded_modules
    from servers import Counter

    def probe():
        otpy.spawn(send_loaded_modules, otpy.self())
        return otpy.receive(timeout=10)

    sup = otpy.Supervisor.start_link([Counter.child_spec(0, name="counter")])
    otpy.call("counter", ("add", 1))
    report = {"child": probe()}
    if sys.argv[2] == "crash":  # a crash report, written by the supervisor alone
        try:
            otpy.call("counter", "crash")
        except otpy.Exited:
            pass
        otpy.Supervisor.which_children(sup)  # answered once it restarted the counter
        report["child after a crash"] = probe()
    elif sys.argv[2] == "lambda":  # a body by value: the zygote loads dill once
        otpy.spawn(lambda: None)
        report["child after a lambda"] = probe()
    report["program"] = sorted(sys.modules)
    otpy.Supervisor.stop(sup)
    print(json.dumps(report))
""")


def test_a_quiet_program_its_zygote_and_its_processes_load_none_of_them():
    out = run(PROGRAM, "quiet")
    report = json.loads(out.stdout)
    assert loaded(report["child"]) == set()
    assert loaded(report["program"]) == set()
    assert out.stderr == ""


def test_what_a_crash_report_loads_stays_in_the_processes_that_used_it():
    out = run(PROGRAM, "crash")
    assert "crash report" in out.stderr  # written: the supervisor imported structlog
    assert "crashed in handle_call" in out.stderr  # the traceback: tblib in the crashed child
    report = json.loads(out.stdout)
    assert loaded(report["child after a crash"]) == set()  # the zygote loaded none of it
    assert "structlog" not in loaded(report["program"])  # the program wrote nothing


def test_a_body_sent_by_value_loads_dill_in_the_zygote_once():
    report = json.loads(run(PROGRAM, "lambda").stdout)
    assert loaded(report["child"]) == set()
    assert loaded(report["child after a lambda"]) == {"dill"}  # inherited from the zygote
