"""`qlens serve --evaluation`: each feature's evaluated record (contexts with the maximal token,
steered continuations, scores) through `/api/evaluated`; the page's title names the model, not a
path; bad evaluation files are one line naming the file and the entry."""

import json

import pytest
from starlette.testclient import TestClient

from qlens_jax.evaluation.showcase import write_feature_records
from qlens_jax.serve.app import create_app
from qlens_jax.serve.evaluated import EvaluatedFeatures, EvaluationFileError
from qlens_jax.serve.page import REQUEST_HEADER

HOSTILE = "<img src=x onerror=alert(1)>"


def _record(dictionary, layer, feature):
    return {
        "dictionary": dictionary,
        "layer": layer,
        "feature": feature,
        "feature_str": f"Feature {dictionary}/{layer}/{feature}",
        "active_contexts": 7,
        "contexts": [{"tokens": ["a", HOSTILE, "b"], "marked": 1, "activation": 3.5}],
        "steering": [
            {"kl_target": 0.25, "alpha": 4.0, "kl": 0.25, "generations": [{"prefix": ["It"], "continuation": [" x"]}]}
        ],
        "lenses": [
            {
                "lens": "query_lens_value",
                "tokens": [HOSTILE],
                "input_score": None,
                "output_score": 0.4,
                "output_score_lo95": 0.3,
                "output_score_hi95": 0.5,
                "judge_score": None,
            }
        ],
    }


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    write_feature_records(out, "tiny-gpt2", 25, [_record("transcoder-40", 1, 7), _record("resid-post-40", 0, 3)])
    return out


@pytest.fixture(scope="module")
def client(serve_run, evaluation):
    app = create_app(serve_run[0], evaluation=evaluation, index_tokens=False)
    with TestClient(app, raise_server_exceptions=False, headers={REQUEST_HEADER: "test"}) as c:
        yield c


def test_evaluated_records_by_feature(client):
    assert client.get("/api/run").json()["evaluated"] == 2
    by_id = client.get("/api/evaluated", params={"dictionary": "transcoder-40", "feature": 7})
    by_str = client.get("/api/evaluated", params={"q": "Feature transcoder-40/1/7"})
    assert by_id.status_code == 200 and by_id.json() == by_str.json() == _record("transcoder-40", 1, 7)
    missing = client.get("/api/evaluated", params={"dictionary": "transcoder-40", "feature": 8})
    assert missing.status_code == 404 and missing.json() == {"error": "Feature transcoder-40/1/8 was not evaluated"}
    bad = client.get("/api/evaluated", params={"dictionary": "transcoder-40", "feature": "x"})
    assert bad.status_code == 400 and "\n" not in bad.text


def test_the_page_names_the_model_and_renders_records_as_text(client, serve_run):
    page = client.get("/").text
    assert "<title>Query Lens: tiny-gpt2</title>" in page
    assert "/api/evaluated" in page and "innerHTML" not in page  # tokens become text nodes only
    assert "mark" in page and "steered continuations" in page


def test_without_an_evaluation_the_title_is_the_model_folder_not_its_path(serve_run):
    manifest = json.loads((serve_run[0] / "run.json").read_text())
    source = manifest["inputs"]["model"]["source"]
    with TestClient(create_app(serve_run[0], index_tokens=False), headers={REQUEST_HEADER: "t"}) as c:
        page = c.get("/").text
        assert f"<title>Query Lens: {source.rstrip('/').rsplit('/', 1)[-1]}</title>" in page
        assert "/" not in page.split("<title>")[1].split("</title>")[0]  # no path
        answer = c.get("/api/evaluated", params={"dictionary": "transcoder-40", "feature": 7})
        assert answer.status_code == 404 and "--evaluation" in answer.json()["error"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ('{"features": {}}', "expected an object with a list of features"),
        ('{"features": [{"dictionary": "d", "layer": 0, "feature": 1}, 3]}', "features entry 1 is not an object"),
        ('{"features": [{"dictionary": "d", "layer": "0", "feature": 1}]}', "features entry 0 lacks"),
        ('{"features": [{"dictionary": "d", "layer": 0, "feature": 1, "contexts": 2}]}', "contexts is not a list"),
    ],
)
def test_bad_evaluation_files_are_named(tmp_path, content, message):
    (tmp_path / "evaluated_features.json").write_text(content)
    with pytest.raises(EvaluationFileError, match=message) as err:
        EvaluatedFeatures(tmp_path)
    assert "evaluated_features.json" in str(err.value)
    with pytest.raises(EvaluationFileError, match="no evaluated_features.json"):
        EvaluatedFeatures(tmp_path / "elsewhere")


def test_serve_refuses_a_bad_evaluation_before_binding(serve_run, tmp_path, capsys):
    from qlens_jax.cli import main

    assert main(["serve", str(serve_run[0]), "--evaluation", str(tmp_path), "--port", "1"]) == 2
    assert "no evaluated_features.json" in capsys.readouterr().err
