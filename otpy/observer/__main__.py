"""``python -m otpy.observer``: list nodes, or look at one.

    python -m otpy.observer               the running nodes of this OS user
    python -m otpy.observer NODE          live view (q quits)
    python -m otpy.observer [NODE] --once the tree once, as text
    python -m otpy.observer [NODE] --json one snapshot as JSON
    python -m otpy.observer --list --json the node list as JSON
    python -m otpy.observer NODE --prometheus 127.0.0.1:9464
                                          serve its metrics until it ends

NODE is a node id or the program's OS pid; it may be left out of --once,
--json and --prometheus when only one node runs.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys

from ._nodes import Node, NodeNotFound, find_node, list_nodes
from ._snapshot import ObserverError, snapshot
from ._text import render_nodes, render_tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otpy.observer",
                                     description="Look at running otpy programs (nodes).")
    parser.add_argument("node", nargs="?", help="node id, or the program's OS pid")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--once", action="store_true", help="print the tree once, as text")
    shape.add_argument("--json", action="store_true", help="print one snapshot as JSON")
    shape.add_argument("--prometheus", metavar="ADDR:PORT",
                       help="serve the node's metrics for Prometheus at "
                            "http://ADDR:PORT/metrics until the node ends (otpy[metrics])")
    parser.add_argument("--list", action="store_true", help="list the running nodes")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="live view refresh, in seconds (default 1)")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"--interval must be > 0, not {args.interval}")
    if args.prometheus is not None:
        listen = parse_listen(args.prometheus)
        if listen is None:
            parser.error(f"--prometheus takes ADDR:PORT (127.0.0.1:9464, [::1]:9464), "
                         f"not {args.prometheus!r}")
    try:
        if args.list or (args.node is None and not (args.once or args.json)):
            nodes = list_nodes()
            if args.json:
                print(json.dumps([n.as_dict() for n in nodes], indent=2))
            else:
                sys.stdout.write(render_nodes(nodes))
            return 0
        if args.json:
            print(json.dumps(snapshot(args.node), indent=2, default=repr))
            return 0
        if args.once:
            sys.stdout.write(render_tree(snapshot(args.node)))
            return 0
        if args.prometheus is not None:
            return serve_prometheus(find_node(args.node), *listen)
        node = find_node(args.node)
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            parser.error("the live view needs a terminal; use --once or --json")
        try:
            from ._live import run  # textual is imported only for the live view
        except ImportError as exc:
            print(f"otpy.observer: the live view needs textual ({exc}); "
                  "pip install 'otpy[observer]', or use --once or --json", file=sys.stderr)
            return 1

        return run(node, args.interval)
    except (NodeNotFound, ObserverError) as exc:
        print(f"otpy.observer: {exc}", file=sys.stderr)
        return 1


def parse_listen(text: str) -> tuple[str, int] | None:
    """ADDR:PORT (an IPv6 address in brackets) as (addr, port); None if it is not one."""
    addr, sep, port = text.rpartition(":")
    if not sep or not addr or not port.isdigit() or int(port) > 65535:
        return None
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    return addr, int(port)


def serve_prometheus(node: Node, addr: str, port: int) -> int:
    """Serve the node's metrics until its zygote ends (the program ended) or Ctrl-C."""
    try:
        from ..metrics import serve  # prometheus_client only when asked for
        server = serve(port, addr, node=node.node)
    except (ImportError, OSError, ValueError) as exc:
        print(f"otpy.observer: {exc}", file=sys.stderr)
        return 1
    try:
        gone = os.pidfd_open(node.zygote_os_pid)
    except ProcessLookupError:
        server.close()
        print(f"otpy.observer: node {node.node} ended", file=sys.stderr)
        return 0
    try:
        print(f"serving node {node.node} at {server.url} until it ends (Ctrl-C stops)",
              flush=True)
        select.select([gone], [], [])  # readable once the zygote has exited
        print(f"node {node.node} ended", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        os.close(gone)
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
