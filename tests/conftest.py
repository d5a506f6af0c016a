"""Test setup: the repository root and `tests/` on sys.path, jaxtyping checks on; the authors'
code (HYU-NLP/query-lens) for the tests that run it: a checkout named by `QLENS_AUTHORS_REPO`, else
the copy beside the project (`../shared/reference/query-lens-*.tar.gz`, extracted into the
session's temporary folder). It is imported from there at run time and never copied into the
project."""

import os
import sys
import tarfile
from pathlib import Path

import pytest

_TESTS = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_TESTS)
for path in (_ROOT, _TESTS):
    if path not in sys.path:
        sys.path.insert(0, path)

import qlens_jax  # noqa: E402,F401  (sets XLA flags before any test touches JAX)

ROOT = Path(_ROOT)


@pytest.fixture(scope="session")
def authors_repo(tmp_path_factory) -> Path:
    named = os.environ.get("QLENS_AUTHORS_REPO")
    if named:
        return Path(named)
    tarballs = sorted((ROOT.parent / "shared" / "reference").glob("query-lens-*.tar.gz"))
    if not tarballs:
        pytest.fail("the authors' code is needed: set QLENS_AUTHORS_REPO to a checkout of HYU-NLP/query-lens "
                    f"(or put query-lens-<commit>.tar.gz in {ROOT.parent / 'shared' / 'reference'})")
    target = tmp_path_factory.mktemp("authors")
    with tarfile.open(tarballs[-1]) as archive:
        archive.extractall(target, filter="data")
    return target / "query-lens"
