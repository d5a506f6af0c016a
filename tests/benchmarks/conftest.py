"""The authors' code (HYU-NLP/query-lens) for the contestant tests: a checkout named by
`QLENS_AUTHORS_REPO`, else the copy beside the project (`../shared/reference/query-lens-*.tar.gz`,
extracted into the session's temporary folder). It is imported from there at run time and
never copied into the project. Its dependencies (transformer-lens, sae_lens, datasets, torch)
are in the test extra; the modules the benchmark imports (`util`, `analysis.{common,jvp,vjp}`)
need nothing else."""

import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
