"""The authors' code (HYU-NLP/query-lens) for the contestant tests: a checkout named by
`QLENS_AUTHORS_REPO`, else a `query-lens-<commit>.tar.gz` in a `shared/reference` folder beside
the project's checkout (where CI keeps it), extracted into the session's temporary folder. It is
imported from there at run time and never copied into the project. A clone that has neither
skips those tests, saying so. Its dependencies (transformer-lens, sae_lens, datasets, torch)
are in the test extra; the modules the benchmark imports (`util`, `analysis.{common,jvp,vjp}`)
need nothing else."""

import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BESIDE = ROOT.parent / "shared" / "reference"


def authors_tarball() -> Path | None:
    """The newest `query-lens-*.tar.gz` beside the checkout, or None."""
    tarballs = sorted(BESIDE.glob("query-lens-*.tar.gz"))
    return tarballs[-1] if tarballs else None


@pytest.fixture(scope="session")
def authors_repo(tmp_path_factory) -> Path:
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
