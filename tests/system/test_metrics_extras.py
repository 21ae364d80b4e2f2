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
