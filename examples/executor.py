"""concurrent.futures code on otpy: ProcessPoolExecutor with the standard
library's signature and errors, where a worker's SIGKILL fails only the
task it was running (the standard library's would break for good).

Run: python examples/executor.py
"""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import otpy
from otpy_pool import ProcessPoolExecutor


def square(x: int) -> int:
    return x * x


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    with ProcessPoolExecutor(max_workers=2) as executor:
        print("squares:", list(executor.map(square, range(10), chunksize=5)))
        doomed = executor.submit(die)
        try:
            doomed.result(timeout=10)
        except BrokenProcessPool as exc:  # an otpy_pool.BrokenWorker
            print(f"the killed worker's task failed: {type(exc).__name__}: {exc}")
        print("the executor serves on:", executor.submit(square, 12).result(timeout=10))
    print(f"stopped node {otpy.self().node}; processes left besides this program: "
          f"{[pid for pid in otpy.processes() if pid != otpy.self()]}")


if __name__ == "__main__":
    main()
