"""Shared fixtures of the CLI tests: the tiny world on disk and one full run over it.

Both are built once per test session, also under pytest-xdist: the first worker to need them
builds them in the session's shared temporary folder (under a file lock), the others reuse
them. The full run's fixture also calls `qlens_jax.query_lens` directly on the run's sample,
in the process that compiled everything for the run, and keeps the result for the parity test.
"""

import pickle
from pathlib import Path

import pytest
from filelock import FileLock

from world import base_args, shared_temp, shared_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return shared_world(tmp_path_factory)


def _direct_signatures(world, out: Path) -> list:
    """The kernel called directly on the run's own sample (sample.npy), with the run's options."""
    import converters
    import qlens_jax
    from qlens_jax.corpus import load_token_sample

    tokens, mask = load_token_sample(out / "sample.npy")
    model = converters.load_model(world.model)
    dictionaries = converters.load_dictionaries([str(d) for d in world.dictionaries], model)
    return list(
        qlens_jax.query_lens(
            model,
            dictionaries,
            tokens,
            mask,
            lenses=qlens_jax.LENSES,
            k=25,
            stats=True,
            self_check=False,
            memory_budget_gb=1.0,
        )
    )


@pytest.fixture(scope="session")
def full_run(world, tmp_path_factory):
    """Every lens, with statistics, over all three dictionaries (one shard each): (DIR, the
    command's arguments, `query_lens`'s own signatures). The self-check is off here (it runs
    in the resume test) to keep compilations few."""
    shared = shared_temp(tmp_path_factory)
    out, direct = shared / "cli-full-run", shared / "cli-full-run-direct.pkl"
    args = base_args(world, out, "--lenses", "all", "--stats", "--no-self-check")
    with FileLock(str(shared / "cli-full-run.lock")):
        if not direct.exists():
            from qlens_jax.cli import main

            assert main(args) == 0
            direct.write_bytes(pickle.dumps(_direct_signatures(world, out)))
    return out, args, pickle.loads(direct.read_bytes())
