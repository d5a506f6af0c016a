"""The accelerator tests reuse the kernel fixtures (tests/lens)."""

import os
import sys

_LENS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lens")
if _LENS not in sys.path:
    sys.path.insert(0, _LENS)
