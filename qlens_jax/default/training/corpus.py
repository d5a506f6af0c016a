"""The training text: Jane Austen's six novels from Debian's `r-cran-janeaustenr`.

The novels are public domain (Project Gutenberg texts); the R package that collects them is
MIT-licensed (Julia Silge). Debian ships it as `r-cran-janeaustenr`; the `.deb` is fetched
with `apt-get download` and unpacked with `dpkg-deb -x` (no R, no root needed), or read from
an installed copy. Lines are unwrapped into paragraphs (blank-line separated, runs of spaces
collapsed), paragraphs joined by a blank line, novels joined by `<|endoftext|>`.

The held-out slice is the last `heldout_fraction` of each novel (cut at a paragraph
boundary); it never reaches the tokenizer trainer, the model or the dictionaries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

from qlens_jax.default.training.rlazyload import read_lazyload

DEBIAN_PACKAGE = "r-cran-janeaustenr"
INSTALLED_DIR = Path("/usr/lib/R/site-library/janeaustenr")
EOT = "<|endoftext|>"
# Fixed order (publication order) so the token stream does not depend on dict order.
NOVELS = (
    ("sensesensibility", "Sense and Sensibility (1811)"),
    ("prideprejudice", "Pride and Prejudice (1813)"),
    ("mansfieldpark", "Mansfield Park (1814)"),
    ("emma", "Emma (1815)"),
    ("northangerabbey", "Northanger Abbey (1817)"),
    ("persuasion", "Persuasion (1817)"),
)


@dataclasses.dataclass(frozen=True)
class Corpus:
    train: str
    heldout: str
    source: dict


def locate_package(cache_dir: Path | None = None) -> tuple[Path, dict]:
    """Directory of the janeaustenr R package, and where it came from.

    Uses an installed copy if there is one, else `apt-get download` + `dpkg-deb -x` into
    `cache_dir` (run `apt-get update` once first on a fresh machine).
    """
    if (INSTALLED_DIR / "data" / "Rdata.rdx").exists():
        return INSTALLED_DIR, {"debian_package": DEBIAN_PACKAGE, "from": str(INSTALLED_DIR)}
    cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="janeaustenr-"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache_dir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=cache_dir, check=True)
        debs = sorted(cache_dir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    deb = debs[-1]
    root = cache_dir / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    info = {
        "debian_package": DEBIAN_PACKAGE,
        "from": deb.name,
        "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
    }
    return root / INSTALLED_DIR.relative_to("/"), info


def paragraphs(lines: list[str]) -> list[str]:
    """Unwrap hard-wrapped lines into paragraphs (blank lines separate paragraphs)."""
    out, current = [], []
    for line in [*lines, ""]:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            out.append(re.sub(r" {2,}", " ", " ".join(current)))
            current = []
    return out


def load_corpus(package_dir: Path, heldout_fraction: float = 0.04) -> tuple[Corpus, list[dict]]:
    data = read_lazyload(package_dir / "data" / "Rdata")
    train_docs, heldout_docs, stats = [], [], []
    for name, title in NOVELS:
        paras = paragraphs(data[name])
        total = sum(len(p) + 2 for p in paras)
        cut, tail = len(paras), 0
        while tail < heldout_fraction * total:
            cut -= 1
            tail += len(paras[cut]) + 2
        train_docs.append("\n\n".join(paras[:cut]))
        heldout_docs.append("\n\n".join(paras[cut:]))
        stats.append({"novel": title, "paragraphs": len(paras), "heldout_paragraphs": len(paras) - cut})
    corpus = Corpus(train=EOT.join(train_docs), heldout=EOT.join(heldout_docs), source={})
    return corpus, stats


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
