"""otpy.metrics without its extras: importing it (and otpy) brings in
neither prometheus_client nor OpenTelemetry, and what needs one says at
once which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run(code: str, *, without: str | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh program in which ``without`` cannot be imported."""
    blocker = f"import sys; sys.modules[{without!r}] = None\n" if without else ""
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_importing_otpy_metrics_imports_no_exporter():
    out = run("""
        import sys
        import otpy, otpy.metrics
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("prometheus_client", "opentelemetry"))
        print(loaded)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("call, module, extra", [
    ("otpy.metrics.serve(0)", "prometheus_client", "metrics"),
    ("otpy.metrics.NodeCollector()", "prometheus_client", "metrics"),
    ("otpy.metrics.instrument()", "opentelemetry", "otel"),
])
def test_a_missing_extra_names_the_install_command_at_once(call, module, extra):
    out = run(f"""
        import otpy, otpy.lowlevel, otpy.metrics
        try:
            {call}
        except otpy.metrics.MissingExtra as exc:
            assert isinstance(exc, ImportError)
            print(exc)
        print(otpy.lowlevel.node_running())  # nothing was started, not even the node
    """, without=module)
    assert out.returncode == 0, out.stderr
    hint, node_running = out.stdout.strip().splitlines()
    assert hint.endswith(f"needs {module}, which is not installed: pip install 'otpy[{extra}]'")
    assert node_running == "False"


def test_importing_otpy_pool_imports_no_exporter_and_not_otpy_metrics():
    out = run("""
        import sys
        import otpy_pool
        print(sorted(m for m in sys.modules if m.split(".")[0] in (
            "prometheus_client", "opentelemetry") or m.startswith("otpy.metrics")))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_sources_come_from_entry_points_and_a_broken_one_is_left_out(tmp_path):
    """otpy_pool's source is found by its entry point, with otpy_pool never
    imported by the program; an entry point that fails is logged and skipped."""
    dist = tmp_path / "broken_source-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-source\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[otpy.metrics_sources]\nbroken = no_such_module_anywhere:source\n")
    out = run(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import otpy.metrics
        names = {{m.name for s in otpy.metrics.sources() for m in s.metrics}}
        print("otpy_processes" in names, "otpy_pool_commands_total" in names,
              "otpy_breaker_state" in names)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True True"
    assert "metrics source entry point failed" in out.stderr + out.stdout
    assert "no_such_module_anywhere:source" in out.stderr + out.stdout
