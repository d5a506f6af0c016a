"""Fig. 4 (HTML and PNG) from an `evaluated_features.json` document: the content is there, the
maximal token is marked, and untrusted token strings are escaped (no markup, no mathtext)."""

import html
import re

import pytest

from qlens_jax.errors import InputError
from qlens_jax.evaluation.figure4 import figure4_html, write_figure4
from qlens_jax.evaluation.showcase import model_display_name

HOSTILE = '<script>alert("x")</script>'


def _lens(name, tokens):
    return {"lens": name, "tokens": tokens, "input_score": 0.5, "output_score": 0.25}


def _document():
    return {
        "model": "gpt2",
        "k": 25,
        "features": [
            {
                "dictionary": "sae",
                "layer": 3,
                "feature": 7,
                "feature_str": "Feature sae/3/7",
                "active_contexts": 2,
                "contexts": [
                    {"tokens": ["The", " cat", HOSTILE, " sat"], "marked": 2, "activation": 4.5},
                    {"tokens": [" $x$", " & ", " dog\n\x15", "\U0001d11e"], "marked": 0, "activation": 2.0},
                ],
                "steering": [
                    {
                        "kl_target": t,
                        "alpha": a,
                        "kl": t,
                        "generations": [{"prefix": ["It", " is"], "continuation": [f" steered{t}", " <b>"]}],
                    }
                    for t, a in ((0.25, 3.0), (0.5, 6.0))
                ],
                "lenses": [
                    _lens("logit_lens_key", ["no"]),
                    _lens("query_lens_key", [" cat", HOSTILE]),
                    _lens("query_lens_value", [" dog", "$\\frac{"]),
                ],
            }
        ],
    }


def test_html_marks_the_maximal_token_and_escapes_everything():
    page = figure4_html(_document())
    assert "<script" not in page and " &lt;b&gt;" in page  # the continuation's " <b>" is text
    assert f"<mark>{html.escape(HOSTILE)}</mark>" in page  # the maximal token of the first context
    assert "<mark> $x$</mark>" in page and " &amp; " in page
    assert "<b>query_lens_key</b>" in page and "<b>query_lens_value</b>" in page  # the preferred lenses
    assert "logit_lens_key" not in page
    for target, alpha in (("0.25", "3"), ("0.5", "6")):
        assert f"<b>KL {target}</b> (α = {alpha})" in page and f"steered{target}" in page
    assert "Query Lens features of gpt2" in page and "default-src 'none'" in page
    tags = set(re.findall(r"<([a-z0-9]+)", page))
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "p", "table", "tr", "th", "td", "b",
                    "br", "span", "div", "mark"}  # fmt: skip


def test_files_and_named_lenses(tmp_path):
    paths = write_figure4(tmp_path, _document(), key_lens="logit_lens_key", value_lens="first_order_value")
    page = paths["figure4_html"].read_text()
    assert "<b>logit_lens_key</b>" in page and "(lens not evaluated)" in page
    assert paths["figure4_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="--figure4-features 0"):
        write_figure4(tmp_path, _document(), max_features=0)


def test_the_model_is_named_not_located(tmp_path):
    folder = tmp_path / "tiny-gpt2"
    folder.mkdir()
    assert model_display_name(str(folder)) == "tiny-gpt2"
    assert model_display_name("openai-community/gpt2") == "openai-community/gpt2"
    assert model_display_name(None, folder) == "tiny-gpt2"
    assert model_display_name("./x/y") == "y"
