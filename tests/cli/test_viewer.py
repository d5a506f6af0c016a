"""`qlens view DIR`: one self-contained HTML file, checked in a real headless browser.

Chromium loads the page from file:// with the search in the URL fragment (`#q=...`), runs
its JavaScript, and dumps the resulting DOM, which is compared with signatures.parquet.
Without chromium this test is skipped, except under CI (CI set), where it fails instead.
"""

import os
import shutil
import subprocess
import urllib.parse
from html.parser import HTMLParser

import pyarrow.parquet as pq
import pytest

from qlens_jax.cli import main

LENS_ORDER = {
    "key": ["query_lens_key", "first_order_key", "logit_lens_key"],
    "value": ["query_lens_value", "first_order_value", "logit_lens_value"],
}


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI is set: install it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this test")
    return path


class _Page(HTMLParser):
    """Feature cards, the lists in them, and the status line of the dumped DOM."""

    def __init__(self):
        super().__init__()
        self.cards, self.status, self.count = [], "", None
        self._list, self._side, self._in_status = None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "article":
            self.cards.append({"feature_str": a["data-feature-str"], "lists": {}, "sides": {}})
        elif tag == "section" and "data-side" in a:
            self._side = a["data-side"]
            self.cards[-1]["sides"][self._side] = []
        elif tag == "div" and a.get("class") == "lens":
            self.cards[-1]["sides"][self._side].append(a["data-lens"])
        elif tag == "ol":
            self._list = (a["data-lens"], a["class"].split()[-1])
            self.cards[-1]["lists"][self._list] = []
        elif tag == "li" and self._list is not None:
            self.cards[-1]["lists"][self._list].append(int(a["data-id"]))
        elif tag == "p" and a.get("id") == "status":
            self._in_status, self.count = True, int(a.get("data-count", -1))

    def handle_endtag(self, tag):
        if tag == "ol":
            self._list = None
        elif tag == "p":
            self._in_status = False

    def handle_data(self, data):
        if self._in_status:
            self.status += data


@pytest.fixture(scope="module")
def viewer(full_run):
    out, *_ = full_run
    assert main(["view", str(out)]) == 0
    return out / "viewer.html"


@pytest.fixture(scope="module")
def rows(full_run):
    table = pq.read_table(full_run[0] / "signatures.parquet")
    return {(r["feature_str"], r["lens"]): r for r in table.to_pylist()}


def browse(page, query, tmp_path) -> _Page:
    url = page.absolute().as_uri() + "#q=" + urllib.parse.quote(query)
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = _Page()
    parsed.feed(result.stdout)
    assert parsed.count is not None, f"the page's script did not run: {result.stdout[:500]} {result.stderr[-1000:]}"
    return parsed


def test_page_is_self_contained(viewer):
    text = viewer.read_text(encoding="utf-8")
    for needle in ("<script src", "<link", "http://", "https://", "@import", "url("):
        assert needle not in text
    assert 'id="qlens-data"' in text


def test_search_by_feature_index_shows_every_lens_side_by_side(viewer, rows, tmp_path):
    page = browse(viewer, "17", tmp_path)
    assert [c["feature_str"] for c in page.cards] == [
        "Feature resid-post-40/0/17",
        "Feature transcoder-40/1/17",
        "Feature resid-pre-40/2/17",
    ]
    assert page.count == 3 and page.status.startswith("3 matches for feature 17")
    for card in page.cards:
        assert card["sides"] == LENS_ORDER  # key and value side by side; Logit Lens next to Query Lens
        for lens in LENS_ORDER["key"] + LENS_ORDER["value"]:
            row = rows[(card["feature_str"], lens)]
            assert card["lists"][(lens, "top")] == row["top_ids"]
            assert card["lists"][(lens, "bottom")] == row["bottom_ids"]


def test_search_by_feature_string_and_layer(viewer, tmp_path):
    assert [c["feature_str"] for c in browse(viewer, "Feature transcoder-40/1/5", tmp_path).cards] == [
        "Feature transcoder-40/1/5"
    ]
    assert [c["feature_str"] for c in browse(viewer, "L2/39", tmp_path).cards] == ["Feature resid-pre-40/2/39"]


def test_layers_option_keeps_only_those_layers(full_run, tmp_path):
    from qlens_jax.viewer import viewer_data

    data = viewer_data(full_run[0], layers=[1])
    assert {f["layer"] for f in data["features"]} == {1} and len(data["features"]) == 40
    assert main(["view", str(full_run[0]), "--layers", "1", "--out", str(tmp_path / "v.html")]) == 0
    page = browse(tmp_path / "v.html", "5", tmp_path)
    assert [c["feature_str"] for c in page.cards] == ["Feature transcoder-40/1/5"]


def test_search_by_token(viewer, rows, tmp_path):
    norm = lambda s: s.strip().lower()  # noqa: E731  (the page's rule)
    top = rows[("Feature resid-post-40/0/0", "query_lens_value")]
    token = next(t for t in top["top_tokens"] if norm(t).isalpha())
    expected = {feature for (feature, _), row in rows.items() if any(norm(t) == norm(token) for t in row["top_tokens"])}
    page = browse(viewer, f"token:{token}", tmp_path)
    assert page.count == len(expected) and "Feature resid-post-40/0/0" in expected
    shown = [c["feature_str"] for c in page.cards]
    assert len(shown) == min(50, len(expected)) and set(shown) <= expected
    assert browse(viewer, "token:no-such-token", tmp_path).count == 0
