"""Every ```python block in README.md and docs/*.md runs as written.

A page's blocks run in order, in one fresh program and one namespace, as a
reader pasting them one after another would run them. Names used inside a
function a block defines must exist too (by the end of the page), even if
nothing calls the function: an example that cannot run is a bug of the docs.

A block that cannot run on its own on purpose (a fragment, a sketch of a
whole application) is marked by the line ``<!-- no-run -->`` just before its
opening fence. Keep such marks rare.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NO_RUN = "<!-- no-run -->"
PAGE_TIMEOUT = 120.0


def blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the fence, code) of each runnable python block."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            start = i
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
                i += 1
            before = next((lines[j].strip() for j in range(start - 1, -1, -1)
                           if lines[j].strip()), "")
            if before != NO_RUN:
                found.append((start + 1, "\n".join(body) + "\n"))
        i += 1
    return found


# The program that runs one page: its blocks in order, then the undefined-name check.
RUNNER = textwrap.dedent('''
    def main():
        # everything here is local: the page's namespace is __main__'s, as a
        # reader's script would have it, and holds nothing of the runner's
        import builtins, json, symtable, sys, traceback
        import __main__

        page, blocks = sys.argv[1], json.loads(sys.stdin.read())
        namespace = __main__.__dict__
        del namespace["main"]
        for line, code in blocks:
            try:
                exec(compile(code, f"{page}:{line}", "exec"), namespace)
            except BaseException:
                print(f"{page}: the block at line {line} failed:", file=sys.stderr)
                traceback.print_exc()
                sys.exit(1)

        def free_names(table):
            """Names a function (or a class in it) reads from module scope."""
            names = set()
            for child in table.get_children():
                if child.get_type() == "function":
                    names |= {s.get_name() for s in child.get_symbols()
                              if s.is_global() and s.is_referenced() and not s.is_assigned()}
                names |= free_names(child)
            return names

        missing = []
        for line, code in blocks:
            table = symtable.symtable(code, f"{page}:{line}", "exec")
            for name in sorted(free_names(table)):
                if name not in namespace and not hasattr(builtins, name):
                    missing.append(f"line {line}: {name}")
        if missing:
            print(f"{page}: names used but never defined: " + ", ".join(missing),
                  file=sys.stderr)
            sys.exit(1)

    main()
''')


def run_page(path: pathlib.Path, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    import json

    found = blocks(path.read_text())
    return subprocess.run([sys.executable, "-c", RUNNER, str(path.relative_to(ROOT))],
                          input=json.dumps(found), capture_output=True, text=True,
                          cwd=cwd, timeout=PAGE_TIMEOUT)


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_block_of_the_page_runs(path, tmp_path):
    result = run_page(path, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]


def test_the_checker_finds_a_failing_block_and_an_undefined_name(tmp_path):
    page = ROOT / "docs" / f"_checker_sample_{tmp_path.name}.md"
    page.write_text(textwrap.dedent("""
        ```python
        def uses_a_stranger():
            return Stranger()
        ```

        <!-- no-run -->
        ```python
        this block is skipped
        ```
    """))
    try:
        result = run_page(page, tmp_path)
        assert result.returncode == 1 and "line 2: Stranger" in result.stderr, result.stderr
        page.write_text("```python\nraise ValueError('in the docs')\n```\n")
        result = run_page(page, tmp_path)
        assert result.returncode == 1 and "the block at line 1 failed" in result.stderr
        assert "ValueError: in the docs" in result.stderr
    finally:
        page.unlink()
