"""Fixtures of the serve tests: the CLI tests' tiny world and one run over it (Query Lens value
and key, Logit Lens value, all three dictionaries), built once per session; the row cache in a
temporary folder."""

import os
import sys
from pathlib import Path

import pytest
from filelock import FileLock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cli"))

from world import base_args, shared_temp, shared_world  # noqa: E402

LENSES = "query_lens_value,query_lens_key,logit_lens_value"


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return shared_world(tmp_path_factory)


@pytest.fixture(scope="session", autouse=True)
def row_cache(tmp_path_factory):
    """Converted dictionary rows go to a session folder, never to the user's cache."""
    folder = shared_temp(tmp_path_factory) / "serve-row-cache"
    old = os.environ.get("QLENS_CACHE_DIR")
    os.environ["QLENS_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("QLENS_CACHE_DIR", None)
    else:
        os.environ["QLENS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def serve_run(world, tmp_path_factory):
    """A finished run for the serve tests: (DIR, the command's arguments)."""
    shared = shared_temp(tmp_path_factory)
    out = shared / "serve-run"
    args = base_args(world, out, "--lenses", LENSES, "--no-self-check")
    with FileLock(str(shared / "serve-run.lock")):
        if not (out / "signatures.parquet").exists():
            from qlens_jax.cli import main

            assert main(args) == 0
    return out, args
