"""The run's files as `qlens serve` / `qlens search` read them: paths taken literally (a folder
`run[1]` beside `run1`), files checked at start-up and while serving (a truncated or changed
file is refused naming it), only regular files among the shards (a FIFO never blocks)."""

import json
import os
import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from qlens_jax.serve.app import create_app
from qlens_jax.serve.errors import RunFileError, UnavailableError
from qlens_jax.serve.page import REQUEST_HEADER
from qlens_jax.serve.reverse import ReverseLookup
from test_serve_cli import free_port, qlens


def _client(run_dir, **kwargs) -> TestClient:
    return TestClient(create_app(run_dir, **kwargs), raise_server_exceptions=False, headers={REQUEST_HEADER: "test"})


def _searchable_token(table: pa.Table, vocab: list[str]) -> str:
    """A token (text) whose id is in some top-k lists of `table`: a rarer one (the first quartile)."""
    counts = np.bincount(np.concatenate(table.column("top_ids").to_pylist()))
    present = [i for i in np.argsort(counts, kind="stable") if counts[i] and vocab[i].strip()]
    return vocab[int(present[len(present) // 4])]


@pytest.fixture(scope="module")
def glob_runs(serve_run, tmp_path_factory):
    """`runs/run[1]` (the serve run) beside `runs/run1` (the same run, other lists): a DuckDB
    glob `run[1]` matches `run1`."""
    runs = tmp_path_factory.mktemp("glob") / "runs"
    literal, lookalike = runs / "run[1]", runs / "run1"
    shutil.copytree(serve_run[0], literal)
    shutil.copytree(serve_run[0], lookalike)
    table = pq.read_table(lookalike / "signatures.parquet")
    shifted = pa.array(
        [[(i + 7) % 300 for i in ids] for ids in table.column("top_ids").to_pylist()], pa.list_(pa.int32())
    )
    table = table.set_column(
        table.schema.get_field_index("top_ids"), "top_ids", shifted.cast(table.schema.field("top_ids").type)
    )
    pq.write_table(table, lookalike / "signatures.parquet")
    return literal, lookalike


@pytest.mark.parametrize("indexed", [True, False], ids=["indexes", "files"])
def test_a_run_folder_with_glob_characters_is_read_literally(glob_runs, indexed):
    literal, lookalike = glob_runs
    expected = pq.read_table(literal / "signatures.parquet").to_pylist()
    other = pq.read_table(lookalike / "signatures.parquet").to_pylist()
    with _client(literal, index_tokens=indexed) as client:
        if indexed:
            client.app.state.server.queries.indexer.index_all()
            assert client.get("/api/run").json()["token_index"]["indexed"] == 1
        page = client.get("/api/features", params={"dictionary": "resid-pre-40", "limit": 40}).json()["features"]
        for feature in page:
            for lens, lists in feature["lenses"].items():
                row = next(r for r in expected if r["feature_str"] == feature["feature_str"] and r["lens"] == lens)
                assert lists["top"]["ids"] == row["top_ids"]
        assert any(
            f["lenses"][lens]["top"]["ids"] != r["top_ids"]
            for f in page
            for lens in f["lenses"]
            for r in other
            if r["feature_str"] == f["feature_str"] and r["lens"] == lens
        )
        one = client.get("/api/feature", params={"dictionary": "transcoder-40", "feature": 3}).json()
        assert all(
            one["lenses"][r["lens"]]["top"]["ids"] == r["top_ids"]
            for r in expected
            if r["feature_str"] == one["feature_str"]
        )
        text = _searchable_token(pq.read_table(literal / "signatures.parquet"), client.app.state.server.queries.vocab)
        found = client.get("/api/search", params={"token": text, "limit": 200}).json()
        hits = (
            found["hits"]
            + client.get("/api/search", params={"token": text, "limit": 200, "offset": 200}).json()["hits"]
        )
        ids = set(found["token_ids"])
        in_lists = {(r["lens"], r["feature_str"]) for r in expected if ids & set(r["top_ids"] + r["bottom_ids"])}
        assert found["total"] == len(in_lists) == len(hits) and in_lists
        assert {(h["lens"], h["feature_str"]) for h in hits} == in_lists
        on_top = {(h["lens"], h["feature_str"]): h["rank"] for h in hits if h["side"] == "top"}
        assert on_top == {
            (r["lens"], r["feature_str"]): 1 + min(r["top_ids"].index(i) for i in ids & set(r["top_ids"]))
            for r in expected
            if ids & set(r["top_ids"])
        }


def test_qlens_search_reads_a_run_folder_with_glob_characters(glob_runs, serve_run):
    result = qlens("search", str(glob_runs[0]), "--promotes", " the", "--top", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hits"] == ReverseLookup(serve_run[0]).lookup(" the", "value", top=3)["hits"]


def test_operators_saved_under_a_folder_with_glob_characters_load_back(serve_run, tmp_path):
    """Orbax globs below the folder it writes: `ops[1]` beside `ops1` must still save and load `ops[1]`."""
    from qlens_jax.lens import load_operators
    from qlens_jax.lens.operators import save_operators

    operators = load_operators(serve_run[0] / "operators")
    save_operators(operators, tmp_path / "ops1" / "operators")
    for name in ("ops[1]", "ops*", "ops?"):
        saved = save_operators(operators, tmp_path / name / "operators")
        assert (saved / "arrays" / "manifest.ocdbt").is_file()  # merged into one checkpoint, not left per process
        back = load_operators(saved)
        assert np.array_equal(np.asarray(back.value), np.asarray(operators.value))
        assert np.array_equal(np.asarray(back.key), np.asarray(operators.key))


def test_a_model_checkpoint_under_a_folder_with_glob_characters_loads_back(world, tmp_path):
    import jax

    import converters

    model = converters.load_model(world.model)
    converters.save_checkpoint(model, tmp_path / "m1")
    converters.save_checkpoint(model, tmp_path / "m[1]")
    restored = converters.load_model(tmp_path / "m[1]")
    assert restored.config == model.config
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(model)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture
def run_copy(serve_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(serve_run[0], folder)
    return folder


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_signature_file_is_refused_at_start_naming_it(run_copy):
    _truncate(run_copy / "signatures.parquet")
    with pytest.raises(RunFileError, match=r"signatures\.parquet: not a readable Parquet file"):
        create_app(run_copy)
    result = qlens("serve", str(run_copy), "--port", str(free_port()))
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    assert "signatures.parquet: not a readable Parquet file" in result.stderr and "Traceback" not in result.stderr


def test_a_signature_file_with_other_row_counts_than_run_json_is_refused(run_copy):
    table = pq.read_table(run_copy / "signatures.parquet")
    pq.write_table(table.slice(0, table.num_rows - 5), run_copy / "signatures.parquet")
    with pytest.raises(RunFileError, match=rf"holds {table.num_rows - 5} rows where run.json says {table.num_rows}"):
        create_app(run_copy)


def test_a_shard_with_other_row_counts_than_its_name_says_is_refused(run_copy):
    (run_copy / "signatures.parquet").unlink()
    manifest = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    shard = run_copy / "shards" / "query_lens_key.d001.c00000.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 10), shard)
    with pytest.raises(
        RunFileError, match=rf"query_lens_key.d001.c00000.parquet: holds 10 rows where run.json says {table.num_rows}"
    ):
        create_app(run_copy)


def test_a_file_that_changes_while_serving_is_a_503_naming_it(run_copy):
    good = (run_copy / "signatures.parquet").read_bytes()
    with _client(run_copy) as client:
        client.app.state.server.queries.indexer.index_all()
        assert client.get("/api/feature", params={"dictionary": 0, "feature": 2}).status_code == 200
        _truncate(run_copy / "signatures.parquet", 0.9)
        for url, params in [
            ("/api/feature", {"dictionary": 0, "feature": 2}),
            ("/api/features", {"layer": 0}),
            ("/api/search", {"token": "the"}),
        ]:
            response = client.get(url, params=params)
            assert response.status_code == 503, (url, response.text)
            assert (
                "signatures.parquet: not a readable Parquet file" in response.json()["error"]
                and "\n" not in response.text
            )
        (run_copy / "signatures.parquet").write_bytes(good)  # put back (a new version of the file): served again
        assert client.get("/api/features", params={"layer": 0, "limit": 2}).status_code == 200


def test_a_fifo_among_the_shards_never_blocks_a_request(run_copy):
    (run_copy / "signatures.parquet").unlink()
    manifest = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    fifo = run_copy / "shards" / "query_lens_key.d002.c00001.parquet"
    os.mkfifo(fifo)
    answers = {}

    def ask():
        with _client(run_copy) as client:
            client.app.state.server.queries.indexer.index_all()
            answers["feature"] = client.get("/api/feature", params={"dictionary": 2, "feature": 5})
            answers["page"] = client.get("/api/features", params={"dictionary": 2, "limit": 3})
            answers["search"] = client.get("/api/search", params={"token": "the"})
            answers["run"] = client.get("/api/run").json()

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout=120)
    if asker.is_alive():  # blocked on the FIFO: open its other end so that the reader ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("a request blocked on a FIFO among the shards")
    assert [answers[k].status_code for k in ("feature", "page", "search")] == [200, 200, 200]
    assert len(answers["feature"].json()["lenses"]) == 3
    assert answers["run"]["feature_index"]["files"] == len(list((run_copy / "shards").glob("*.parquet"))) - 1


def test_operators_left_unmerged_by_an_older_qlens_are_refused_with_a_hint(run_copy):
    """What an older qlens saved under `run[1]`: the per-process parts without the merged manifest."""
    (run_copy / "operators" / "arrays" / "manifest.ocdbt").unlink()
    with pytest.raises(UnavailableError, match=r"operators: cannot read the run's saved operators .*saved unmerged"):
        ReverseLookup(run_copy)


def test_a_run_holding_nan_scores_from_an_older_qlens_is_served_with_nulls(serve_run, tmp_path):
    """Runs now stop on a non-finite score (exit 2); one written before that still reads: its
    NaN scores are answered as null, not as a 500."""
    run = tmp_path / "old"
    shutil.copytree(serve_run[0], run)
    table = pq.read_table(run / "signatures.parquet")
    scores = table.column("top_scores").to_pylist()
    scores[0] = [float("nan")] * len(scores[0])
    column = pa.array(scores, table.schema.field("top_scores").type)
    table = table.set_column(table.schema.get_field_index("top_scores"), "top_scores", column)
    pq.write_table(table, run / "signatures.parquet")
    first = table.slice(0, 1).to_pylist()[0]
    with _client(run) as client:
        answer = client.get("/api/feature", params={"dictionary": first["dictionary"], "feature": first["feature"]})
        assert answer.status_code == 200
        lists = [lens["top"] for lens in answer.json()["lenses"].values() if None in lens["top"]["scores"]]
        assert lists and all(score is None for score in lists[0]["scores"])
        page = client.get("/api/features", params={"dictionary": first["dictionary"], "limit": 5})
        assert page.status_code == 200
