"""The channel tests reuse the kernel fixtures (tests/lens) and the CLI's tiny world (tests/cli)."""

import os
import sys

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for sub in ("lens", "cli"):
    path = os.path.join(_TESTS, sub)
    if path not in sys.path:
        sys.path.insert(0, path)
