"""`python -m qlens_jax.cli ...`: the same as `qlens ...`."""

import sys

from qlens_jax.cli import main

sys.exit(main())
