"""Test setup: the repository root and `tests/` on sys.path, jaxtyping checks on; the authors'
code (HYU-NLP/query-lens) for the tests that run it: a checkout named by `QLENS_AUTHORS_REPO`, else
a `query-lens-<commit>.tar.gz` in a `shared/reference` folder beside the project's checkout (where
CI keeps it), extracted into the session's temporary folder; a clone that has neither skips those
tests, saying so. It is imported from there at run time and never copied into the project."""

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
BESIDE = ROOT.parent / "shared" / "reference"  # where CI keeps the authors' code, beside the checkout


def authors_tarball() -> Path | None:
    """The newest `query-lens-*.tar.gz` beside the checkout, or None."""
    tarballs = sorted(BESIDE.glob("query-lens-*.tar.gz"))
    return tarballs[-1] if tarballs else None


@pytest.fixture(scope="session")
def authors_repo(tmp_path_factory) -> Path:
    """The authors' checkout: `QLENS_AUTHORS_REPO`, else the tarball beside the checkout extracted
    into the session's temporary folder; a clone that has neither skips the tests that need it."""
    named = os.environ.get("QLENS_AUTHORS_REPO")
    if named:
        if not Path(named).is_dir():
            pytest.fail(f"QLENS_AUTHORS_REPO={named}: not a folder")
        return Path(named)
    tarball = authors_tarball()
    if tarball is None:
        pytest.skip("the authors' code is absent: set QLENS_AUTHORS_REPO to a checkout of HYU-NLP/query-lens")
    target = tmp_path_factory.mktemp("authors")
    with tarfile.open(tarball) as archive:
        archive.extractall(target, filter="data")
    return target / "query-lens"
