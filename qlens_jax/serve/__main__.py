"""`python -m qlens_jax.serve serve DIR ...` / `search DIR ...`."""

import sys

from qlens_jax.serve.cli import main

sys.exit(main())
