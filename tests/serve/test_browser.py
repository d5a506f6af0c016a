"""The served page in a real headless Chromium: search by token, open a feature, follow a
reverse lookup from a token of its lists. Chromium loads http://127.0.0.1:PORT/#q=... from a
running `qlens serve` and dumps the DOM its script built from the JSON API; the DOM is checked
against the Parquet rows and the API. Skipped without chromium, except under CI (see
tests/cli/test_viewer.py)."""

import os
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from test_serve_cli import ROOT, free_port, get_json
from test_viewer import chromium


class _Page(HTMLParser):
    """Cards (with the reverse-lookup links of their tokens), result tables, status, error."""

    def __init__(self):
        super().__init__()
        self.cards, self.rows, self.status, self.count, self.error = [], [], "", None, ""
        self._list, self._cell, self._where = None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "article":
            self.cards.append({"feature_str": a["data-feature-str"], "lists": {}, "links": {}})
        elif tag == "ol":
            self._list = (a["data-lens"], a["class"].split()[-1])
            self.cards[-1]["lists"][self._list], self.cards[-1]["links"][self._list] = [], []
        elif tag == "li" and self._list is not None:
            self.cards[-1]["lists"][self._list].append(int(a["data-id"]))
        elif tag == "a" and self._list is not None:
            self.cards[-1]["links"][self._list].append(a["href"])
        elif tag == "tr" and "data-feature" in a:
            self.rows.append({"feature": a["data-feature"], "cells": [], "links": []})
        elif tag == "td" and self.rows:
            self.rows[-1]["cells"].append("")
            self._cell = True
        elif tag == "a" and self._cell:
            self.rows[-1]["links"].append(a["href"])
        elif tag == "p" and a.get("id") in ("status", "error"):
            self._where = a["id"]
            if a["id"] == "status" and "data-count" in a:
                self.count = int(a["data-count"])

    def handle_endtag(self, tag):
        if tag == "ol":
            self._list = None
        elif tag == "td":
            self._cell = None
        elif tag == "p":
            self._where = None

    def handle_data(self, data):
        if self._cell:
            self.rows[-1]["cells"][-1] += data
        elif self._where == "status":
            self.status += data
        elif self._where == "error":
            self.error += data


@pytest.fixture(scope="module")
def server(serve_run):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "qlens_jax.cli", "serve", str(serve_run[0]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        try:
            assert "127.0.0.1" in process.stdout.readline()
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    get_json(base + "/api/run")
                    break
                except OSError:
                    import time

                    time.sleep(0.1)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=30)


def browse(base: str, fragment: str, tmp_path: Path) -> _Page:
    url = base + "/" + fragment if fragment.startswith("#") else base + "/#q=" + urllib.parse.quote(fragment)
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
        "--virtual-time-budget=60000",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    page = _Page()
    page.feed(result.stdout)
    assert page.count is not None, f"the page did not finish: {result.stdout[:800]} {result.stderr[-1000:]}"
    return page


@pytest.fixture(scope="module")
def rows(serve_run):
    return {(r["feature_str"], r["lens"]): r for r in pq.read_table(serve_run[0] / "signatures.parquet").to_pylist()}


def test_search_by_token_open_a_feature_and_follow_a_reverse_lookup(server, rows, tmp_path):
    token = next(
        t for t in rows[("Feature resid-post-40/0/0", "query_lens_value")]["top_tokens"] if t.strip().isalpha()
    )
    # 1. search by token: the table lists what the API finds
    found = browse(server, f"token:{token}", tmp_path)
    api = get_json(server + "/api/search?" + urllib.parse.urlencode({"token": token, "limit": 50}))
    assert found.count == api["total"] > 0 and found.error == ""
    assert [r["feature"] for r in found.rows] == [f"{h['dictionary']}/{h['layer']}/{h['feature']}" for h in api["hits"]]
    # 2. open a feature from the results: its card shows the stored lists of every lens
    opened = browse(server, found.rows[0]["links"][0], tmp_path)
    (card,) = opened.cards
    assert card["feature_str"] == api["hits"][0]["feature_str"]
    for (lens, side), ids in card["lists"].items():
        assert ids == rows[(card["feature_str"], lens)][f"{side}_ids"]
    # 3. follow a reverse lookup from a token of the value list: every feature ranked by it
    link = card["links"][("query_lens_value", "top")][0]
    token_id = rows[(card["feature_str"], "query_lens_value")]["top_ids"][0]
    assert link == f"#q={urllib.parse.quote(f'promotes:id:{token_id}', safe='')}"
    ranked = browse(server, link, tmp_path)
    reverse = get_json(server + f"/api/reverse?token=id:{token_id}&side=value&top=50")
    assert ranked.count == len(reverse["hits"]) == 50 and ranked.error == ""
    assert [r["feature"] for r in ranked.rows] == [
        f"{h['dictionary']}/{h['layer']}/{h['feature']}" for h in reverse["hits"]
    ]
    assert [float(r["cells"][3]) for r in ranked.rows] == pytest.approx([h["score"] for h in reverse["hits"]], rel=1e-4)
    # ... and from the ranking, back to a feature
    back = browse(server, ranked.rows[0]["links"][0], tmp_path)
    assert [c["feature_str"] for c in back.cards] == [f"Feature {ranked.rows[0]['feature']}"]


def test_features_by_index_and_errors_on_the_page(server, tmp_path):
    page = browse(server, "17", tmp_path)
    assert [c["feature_str"] for c in page.cards] == [
        "Feature resid-post-40/0/17",
        "Feature resid-pre-40/2/17",
        "Feature transcoder-40/1/17",
    ]
    bad = browse(server, "promotes: the river", tmp_path)
    assert bad.count == -1 and "not one" in bad.error and bad.cards == []
