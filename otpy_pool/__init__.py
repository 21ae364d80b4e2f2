"""otpy_pool: session pool, circuit breaker, rate limiter and error recovery.

Coming: built on otpy's supervisors (see the project's issues). Importing it
today gives this package and nothing else.
"""

__all__: list[str] = []
