"""A supervision tree with a crashing child: the supervisor restarts it, and
gives up (exits "shutdown") once it crashes too often.

    shop (Supervisor, one_for_one, at most 3 restarts in 5 s)
    ├─ prices   a GenServer holding state, registered as "prices"
    └─ till     a GenServer that crashes on a bad request

The program crashes ``till`` a few times with a bad request, shows the
restarts the supervisor counted, and stops the tree. ``prices`` keeps its
state throughout: one_for_one restarts only the child that crashed.

Run: python examples/supervision.py [--crashes N]
"""

from __future__ import annotations

import argparse

import otpy
from otpy import observer


class Prices(otpy.GenServer):
    def init(self) -> None:
        self.prices = {"tea": 3}

    def handle_call(self, item, caller):
        return self.prices.get(item)

    def handle_cast(self, update):
        item, price = update
        self.prices[item] = price


class Till(otpy.GenServer):
    def init(self) -> None:
        self.total = 0

    def handle_call(self, amount, caller):
        if amount < 0:
            raise ValueError(f"a till cannot take {amount}")  # the crash: the child exits
        self.total += amount
        return self.total


def restarts_of(child_id: str) -> int:
    """What the supervisor says of the child, as the observer reads it."""
    rows = list(observer.snapshot()["tree"])
    while rows:
        row = rows.pop()
        if row["child_id"] == child_id:
            return row["restarts"]
        rows += row["children"]
    raise LookupError(child_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=3, help="bad requests to send (default 3)")
    args = parser.parse_args()

    shop = otpy.Supervisor.start_link([
        Prices.child_spec(name="prices"),
        Till.child_spec(name="till"),
    ], strategy="one_for_one", max_restarts=3, max_seconds=5.0, name="shop")
    otpy.cast("prices", ("coffee", 4))
    print("till takes 5:", otpy.call("till", 5))

    for n in range(1, args.crashes + 1):
        till = otpy.whereis("till")
        ref = otpy.monitor(till)
        try:
            otpy.call("till", -1)
        except otpy.Exited as exc:  # the server died during the call: its exit reason
            print(f"crash {n}: the till exited with {exc.reason!r}")
        otpy.receive(timeout=10, match=lambda m: isinstance(m, otpy.Down) and m.ref == ref)
        try:
            # Answered once the restart is done: the supervisor handled the
            # till's exit before we could see its Down.
            otpy.Supervisor.which_children(shop)
        except (otpy.Exited, otpy.NoProc):
            print("  the shop gave up: more than 3 restarts in 5 s (its supervisor "
                  "would restart it)")
            break
        print(f"  till restarted ({restarts_of('till')} restarts), "
              f"a fresh till takes 5: {otpy.call('till', 5)}")
        print(f"  prices kept its state: coffee costs {otpy.call('prices', 'coffee')}")

    if otpy.is_alive(shop):
        otpy.Supervisor.stop(shop)
    print(f"stopped node {otpy.self().node}; processes left besides this program: "
          f"{[pid for pid in otpy.processes() if pid != otpy.self()]}")


if __name__ == "__main__":
    main()
