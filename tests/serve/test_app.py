"""The JSON API of `qlens serve` (in process, through Starlette's test client): answers equal
the Parquet rows; bad requests get a 4xx with one line of JSON; the run folder is never written."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from qlens_jax.serve.app import create_app
from qlens_jax.serve.page import REQUEST_HEADER
from qlens_jax.serve.queries import normalize_token
from qlens_jax.serve.reverse import ReverseLookup


def snapshot(folder):
    """Every path under `folder` with its size and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))} | {
        ".": folder.stat().st_mtime_ns
    }


@pytest.fixture(scope="module")
def client(serve_run):
    app = create_app(serve_run[0])
    with TestClient(app, raise_server_exceptions=False, headers={REQUEST_HEADER: "test"}) as c:
        yield c


@pytest.fixture(scope="module")
def rows(serve_run):
    return pq.read_table(serve_run[0] / "signatures.parquet").to_pylist()


def test_run_summary(client, serve_run):
    run = client.get("/api/run").json()
    assert run["status"] == "complete" and run["lenses"] == ["query_lens_value", "query_lens_key", "logit_lens_value"]
    assert [(d["name"], d["layer"], d["d_sae"]) for d in run["dictionaries"]] == [
        ("resid-post-40", 0, 40),
        ("resid-pre-40", 2, 40),
        ("transcoder-40", 1, 40),
    ]


def test_feature_by_id_and_by_string_equals_the_parquet_rows(client, rows):
    by_id = client.get("/api/feature", params={"dictionary": "transcoder-40", "feature": 7}).json()
    by_str = client.get("/api/feature", params={"q": "Feature transcoder-40/1/7"}).json()
    assert by_id == by_str
    expected = [r for r in rows if r["dictionary"] == "transcoder-40" and r["feature"] == 7]
    assert by_id["feature_str"] == "Feature transcoder-40/1/7" and set(by_id["lenses"]) == {r["lens"] for r in expected}
    for r in expected:
        lens = by_id["lenses"][r["lens"]]
        for side in ("top", "bottom"):
            assert lens[side]["ids"] == r[f"{side}_ids"] and lens[side]["tokens"] == r[f"{side}_tokens"]
            assert lens[side]["scores"] == r[f"{side}_scores"]


def test_pages_of_features(client):
    first = client.get("/api/features", params={"dictionary": "resid-pre-40", "limit": 15}).json()
    assert [f["feature"] for f in first["features"]] == list(range(15)) and first["next"] == 15
    second = client.get(
        "/api/features", params={"dictionary": "resid-pre-40", "start": first["next"], "limit": 200}
    ).json()
    assert [f["feature"] for f in second["features"]] == list(range(15, 40)) and second["next"] is None
    by_layer = client.get("/api/features", params={"layer": 1, "limit": 3}).json()
    assert [(f["dictionary"], f["feature"]) for f in by_layer["features"]] == [("transcoder-40", i) for i in range(3)]
    assert all(len(f["lenses"]) == 3 for f in by_layer["features"])


def _queries(run_dir, indexed: bool):
    from qlens_jax.serve.app import run_vocab
    from qlens_jax.serve.queries import Queries
    from qlens_jax.serve.rundata import RunData

    run = RunData(run_dir)
    queries = Queries(run, run_vocab(run), token_index=indexed)
    if indexed:
        queries.indexer.index_all()
        for kind in ("feature", "token"):
            assert queries.indexer.progress(kind) == {"files": 1, "indexed": 1, "error": None}
            assert queries.indexer.split(run.parquet_files(), kind)[1] == []
    return queries


def test_feature_lookups_through_the_feature_index_equal_the_file(serve_run):
    """Every feature of every dictionary, answered from the feature index and by DuckDB over the
    file: the same answer (lists, scores, relative variance, feature string, lens order)."""
    indexed, scanned = _queries(serve_run[0], True), _queries(serve_run[0], False)
    for entry in indexed.run.dictionaries:
        for feature in range(entry.d_sae):
            assert indexed.feature(entry, feature) == scanned.feature(entry, feature)


@pytest.mark.parametrize("how", ["server", "token index", "scan"])
def test_token_search_finds_every_stored_occurrence_with_rank_and_score(client, rows, serve_run, how):
    token = next(t for t in rows[0]["top_tokens"] if normalize_token(t).isalpha())
    expected = []
    for r in rows:
        for side in ("top", "bottom"):
            ranks = [i for i, t in enumerate(r[f"{side}_tokens"]) if normalize_token(t) == normalize_token(token)]
            if ranks:
                expected.append(
                    (r["lens"], r["dictionary_index"], r["feature"], side, ranks[0] + 1, r[f"{side}_scores"][ranks[0]])
                )
                break
    if how == "server":
        search = lambda **params: client.get("/api/search", params=params).json()  # noqa: E731
    else:
        queries = _queries(serve_run[0], how == "token index")
        search = lambda token, limit=50, offset=0, lens=None: queries.token_search(token, lens, limit, offset)  # noqa: E731
    answer = search(token=token.upper() + "  ", limit=200)
    got = [(h["lens"], h["dictionary_index"], h["feature"], h["side"], h["rank"], h["score"]) for h in answer["hits"]]
    assert answer["total"] == len(expected) == len(got) > 0
    assert sorted(got) == sorted(expected)
    assert [(h["side"] == "bottom", h["rank"]) for h in answer["hits"]] == sorted(
        (h["side"] == "bottom", h["rank"]) for h in answer["hits"]
    )
    page = search(token=token, limit=2, offset=1)
    assert [h["feature_str"] for h in page["hits"]] == [h["feature_str"] for h in answer["hits"][1:3]] and page[
        "total"
    ] == answer["total"]
    lens_only = search(token=token, lens="query_lens_key", limit=200)
    assert lens_only["total"] == sum(1 for e in expected if e[0] == "query_lens_key")
    assert search(token="no-such-token")["total"] == 0


def test_token_search_through_the_indexes_equals_the_scan_of_the_file(serve_run, rows):
    """Every file indexed (the token indexes read with pyarrow) or none (DuckDB over the file):
    the same hits, order, totals, pages and lens filters, for many tokens."""
    indexed, scanned = _queries(serve_run[0], True), _queries(serve_run[0], False)
    assert not indexed.indexer.split(indexed.run.parquet_files(), "token")[1]
    tokens = sorted(
        {
            indexed.vocab[t]
            for r in rows[:40]
            for t in r["top_ids"][:3] + r["bottom_ids"][:2]
            if normalize_token(indexed.vocab[t])
        }
    )
    assert len(tokens) > 20
    for token in tokens:
        for lens in (None, "query_lens_key"):
            for limit, offset in ((200, 0), (3, 2)):
                assert indexed.token_search(token, lens, limit, offset) == scanned.token_search(
                    token, lens, limit, offset
                )


def test_reverse_lookup_endpoint_equals_the_python_api(client, serve_run):
    answer = client.get("/api/reverse", params={"token": " the", "side": "key", "top": 7}).json()
    direct = ReverseLookup(serve_run[0]).lookup(" the", "key", top=7)
    assert answer["hits"] == direct["hits"] and len(answer["hits"]) == 7
    one = client.get("/api/reverse", params={"token": " the", "dictionary": "resid-pre-40", "top": 3}).json()
    assert {h["dictionary"] for h in one["hits"]} == {"resid-pre-40"} and one["side"] == "value"


BAD = [
    ("/api/feature?dictionary=transcoder-40&feature=40", 404, "out of range"),
    ("/api/feature?dictionary=transcoder-40&feature=-1", 400, "between"),
    ("/api/feature?dictionary=transcoder-40&feature=abc", 400, "expected an integer"),
    ("/api/feature?dictionary=nope&feature=1", 404, "not a dictionary of this run"),
    ("/api/feature?q=Feature%20nope/1/2", 404, "not a feature of this run"),
    ("/api/feature", 400, "missing parameter"),
    ("/api/features?dictionary=resid-pre-40&limit=100000000", 400, "limit"),
    ("/api/features?layer=7", 404, "no dictionary"),
    ("/api/features", 400, "give dictionary"),
    ("/api/search?token=the&limit=5000", 400, "limit"),
    ("/api/search?token=%20%20", 400, "empty token"),
    ("/api/search?token=the&lens=nope", 400, "not a lens of this run"),
    ("/api/search?token=" + "x" * 2000, 400, "longer than"),
    ("/api/reverse?token=%20the%20river", 400, "not one"),
    ("/api/reverse?token=the&side=middle", 400, "side"),
    ("/api/reverse?token=the&top=99999999", 400, "top"),
    ("/../run.json", 404, "no such page"),
    ("/api/..%2f..%2frun.json", 404, "no such page"),
    ("/%2e%2e/%2e%2e/etc/passwd", 404, "no such page"),
    ("/run.json", 404, "no such page"),
    ("/signatures.parquet", 404, "no such page"),
]


@pytest.mark.parametrize("url,status,message", BAD)
def test_bad_requests_get_a_4xx_with_one_line_of_json(client, url, status, message):
    response = client.get(url)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert "\n" not in response.text and "Traceback" not in response.text
    assert message in response.json()["error"]


def test_wrong_method_is_a_4xx_too(client):
    response = client.post("/api/run")
    assert response.status_code == 405 and set(response.json()) == {"error"}


def test_a_failure_inside_is_a_500_with_one_line_and_no_traceback(serve_run):
    def broken(run):
        raise RuntimeError("boom\nline two")

    app = create_app(serve_run[0], reverse_factory=broken)
    with TestClient(app, raise_server_exceptions=False, headers={REQUEST_HEADER: "test"}) as c:
        response = c.get("/api/reverse", params={"token": " the"})
    assert response.status_code == 500 and "\n" not in response.text and "boom" not in response.text
    assert response.json() == {"error": "internal error (RuntimeError); the server log has the details"}


def test_only_local_host_headers_when_asked(serve_run):
    app = create_app(serve_run[0], allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://evil.example") as c:
        assert c.get("/api/run").status_code == 400
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/api/run").status_code == 200


def test_a_run_in_progress_is_served_from_its_shards(serve_run, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(serve_run[0], live)
    (live / "signatures.parquet").unlink()
    manifest = json.loads((live / "run.json").read_text())
    (live / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    for shard in (live / "shards").glob("query_lens_key.*.parquet"):
        shard.unlink()
    (live / "shards" / ".tmp-1-query_lens_key.d000.c00000.parquet").write_bytes(b"half written")
    with TestClient(create_app(live), raise_server_exceptions=False) as c:
        assert c.get("/api/run").json()["status"] == "running"
        feature = c.get("/api/feature", params={"dictionary": "resid-post-40", "feature": 3}).json()
        assert set(feature["lenses"]) == {"query_lens_value", "logit_lens_value"}
        shutil.copy(serve_run[0] / "shards" / "query_lens_key.d000.c00000.parquet", live / "shards")
        feature = c.get("/api/feature", params={"dictionary": "resid-post-40", "feature": 3}).json()
        assert set(feature["lenses"]) == {"query_lens_value", "query_lens_key", "logit_lens_value"}
        missing = c.get("/api/feature", params={"dictionary": "resid-pre-40", "feature": 3})
        assert missing.status_code == 200
        for shard in (live / "shards").glob("*.d001.*.parquet"):
            shard.unlink()
        missing = c.get("/api/feature", params={"dictionary": "resid-pre-40", "feature": 3})
        assert missing.status_code == 404 and "still in progress" in missing.json()["error"]


def test_serving_never_writes_into_the_run_folder(serve_run):
    before = snapshot(serve_run[0])
    with TestClient(create_app(serve_run[0]), raise_server_exceptions=False, headers={REQUEST_HEADER: "test"}) as c:
        for url in [
            "/",
            "/api/run",
            "/api/feature?dictionary=0&feature=1",
            "/api/features?layer=0",
            "/api/search?token=the",
            "/api/reverse?token=%20the",
            "/api/reverse?token=%20the&side=key",
            "/api/feature?dictionary=0&feature=99",
        ]:
            c.get(url)
    assert snapshot(serve_run[0]) == before
