"""``python -m otpy_pool.bench``: see the package's docs.

The cases live in the importable package, not in ``__main__``: a worker class
defined in ``__main__`` is shipped to every new worker by value (dill), and
the replacement and recovery cases would measure that instead of the pool.
"""

import sys

from otpy_pool.bench import main

sys.exit(main())
