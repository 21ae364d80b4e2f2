"""The ``bench`` extra installs every peer the benchmarks measure: its skip
message recommends ``pip install -e '.[bench]'``, which must then bring them."""

from __future__ import annotations

import configparser
import re

from otpy_pool import bench

from helpers import ROOT


def extra(name: str) -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.extras_require"][name].split()
    return {re.split(r"[<>=\[ ]", line)[0].lower() for line in lines}


def test_the_bench_extra_brings_every_peer_the_benchmarks_measure():
    measured = {peer.module for peer in bench.PEERS if peer.module is not None}
    measured |= {"pybreaker", "limits"}  # the breaker and limiter figures' references
    assert measured <= extra("bench"), measured - extra("bench")
