"""otpy_pool: what applications build on otpy's supervisors: a session pool of
worker processes, a circuit breaker, a rate limiter and error recovery, each a
supervised part of the program's tree.

Built on ``otpy`` and ``otpy.lowlevel`` only.
"""

__all__: list[str] = []

# ---- pool (issue: session pool) ----

# ---- breaker and limiter ----

# ---- recovery ----
