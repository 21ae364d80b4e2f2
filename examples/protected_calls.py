"""A pool behind a rate limit, a circuit breaker and error recovery, calling
a flaky HTTP service the program starts itself (on 127.0.0.1, a free port).

    service   every 3rd request fails with 503 ("flaky"), then every request
              ("down"), then none ("up")
    pool      two workers whose ``get`` command fetches a URL
    limiter   at most 100 calls a second to the service
    breaker   3 failures within 10 s open it; after 0.5 s one trial call
    recovery  a failed fetch is retried (3 times, with backoff); while the
              breaker is open, callers get a cached answer at once

Run: python examples/protected_calls.py
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.request

import otpy
from otpy_pool import CircuitBreaker, Policy, Pool, RateLimiter, Recovery, Worker, command, protect


class Service(http.server.BaseHTTPRequestHandler):
    """A service that fails as ``Service.mode`` says; counts the requests it gets."""

    mode = "flaky"
    requests = 0

    def do_GET(self) -> None:
        Service.requests += 1
        failing = Service.mode == "down" or (Service.mode == "flaky"
                                             and Service.requests % 3 == 0)
        body = b"unavailable" if failing else f"answer {Service.requests}".encode()
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


class Fetcher(Worker):
    @command
    def get(self, session, url):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            status = exc.code
        # Raised outside the except block: a plain ConnectionError travels back
        # to the caller as itself (an HTTPError, or one chained to it, would
        # arrive as otpy.RemoteError, as it cannot be pickled).
        raise ConnectionError(f"{status} from {url}")


def transient(exc: BaseException) -> str | None:
    """The recovery's classifier: the service's 503s are worth a retry."""
    return "transient" if isinstance(exc, ConnectionError) else None


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"flaky service at {url}")

    pool = Pool.start_link(Fetcher, size=2, name="fetchers")
    limiter = RateLimiter.start_link("service-rate")
    breaker = CircuitBreaker.start_link("service", max_failures=3, window=10.0,
                                        reset_after=0.5)
    recovery = Recovery.start_link("recovery", {
        "transient": Policy(retries=3, backoff=0.01),
        "circuit_open": Policy(fallback=lambda command, *args, **kwargs: "cached answer"),
    }, classifier=transient)
    service = protect(pool, limiter=(limiter, "service", 100, 1.0), breaker=breaker,
                      recovery=recovery, deadline=5.0, idempotent={"get"},
                      breaker_failure_on=(ConnectionError,))

    # 1. flaky: every 3rd request fails, and the retry succeeds
    answers = [service.execute("get", url) for _ in range(6)]
    print(f"flaky: 6 calls, {Service.requests} requests, answers: {answers}")
    print(f"  retried and recovered: {recovery.stats()['transient'].recovered}")

    # 2. down: the breaker saw 2 failures while the service was flaky; a
    #    third within 10 s opens it, and from then on callers get the
    #    fallback at once, and the service is left alone
    Service.mode = "down"
    before = Service.requests
    answers = [service.execute("get", url) for _ in range(5)]
    print(f"down: 5 calls, {Service.requests - before} requests, breaker {breaker.state}, "
          f"answers: {answers}")

    # 3. up again: after reset_after a trial call goes through and closes it
    Service.mode = "up"
    deadline = time.monotonic() + 10.0
    answer = service.execute("get", url)
    while answer == "cached answer" and time.monotonic() < deadline:
        time.sleep(0.05)  # an example may wait: the breaker reopens to a trial after 0.5 s
        answer = service.execute("get", url)
    print(f"up: {answer!r}, breaker {breaker.state}")
    print(f"limiter: {limiter.inspect('service', limit=100, window=1.0).count} "
          f"calls in this second of 100")

    recovery.stop()
    breaker.stop()
    limiter.stop()
    pool.stop()
    server.shutdown()
    server.server_close()
    print(f"stopped node {otpy.self().node}; processes left besides this program: "
          f"{[pid for pid in otpy.processes() if pid != otpy.self()]}")


if __name__ == "__main__":
    main()
