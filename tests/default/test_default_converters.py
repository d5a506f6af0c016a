"""The bundled artifacts through the public converters: `converters.load_model`,
`load_tokenizer` and `load_dictionary` reproduce the recorded quality figures on the held-out
slice (the same protocol as `quality.json`'s "heldout" entry), and `qlens demo` runs offline."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

import converters
from qlens_jax import default
from qlens_jax.cli import main

QUALITY = json.loads(default.quality_path().read_text())
WINDOW = QUALITY["heldout"]["window_tokens"]


@pytest.fixture(scope="module")
def converted():
    model = converters.load_model(default.model_dir())
    tokenizer = converters.load_tokenizer(default.model_dir())
    ids = tokenizer.encode(default.heldout_text_path().read_text(encoding="utf-8")).ids
    n = len(ids) // WINDOW
    windows = jnp.asarray(np.asarray(ids[: n * WINDOW]).reshape(n, WINDOW), jnp.int32)
    logits, residuals = jax.jit(lambda t: model.run_with_residuals(t))(windows)
    return model, windows, logits, residuals


def test_heldout_loss_matches_record(converted):
    model, windows, logits, _ = converted
    logprobs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logprobs, windows[:, 1:, None], axis=-1).mean()
    assert float(nll) == pytest.approx(QUALITY["model"]["heldout_loss"], abs=1e-3)
    assert float(nll) < 0.6 * QUALITY["model"]["log_vocab"]


@pytest.mark.parametrize("name", default.DICTIONARY_NAMES)
def test_dictionary_explained_variance_matches_record(converted, name):
    model, _, _, residuals = converted
    dictionary = converters.load_dictionary(default.dictionary_dir(name), model)
    layer = dictionary.layer
    if dictionary.kind == "transcoder":
        x, y = residuals.mlp_in[layer], residuals.mlp_out[layer]
    else:
        x = y = residuals.resid_post[layer]
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    y_hat = dictionary.reconstruct(x)
    explained = 1 - float(jnp.square(y - y_hat).sum() / jnp.square(y - y.mean(0)).sum())
    record = QUALITY["dictionaries"][name]
    assert explained == pytest.approx(record["explained_variance"], abs=2e-3)
    assert float((dictionary.encode(x) != 0).sum(-1).mean()) == pytest.approx(record["mean_l0"], abs=0.05)


def test_demo_runs_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-samples", "16", "--quiet"]) == 0
    table = pq.read_table(out / "signatures.parquet")
    n_features = sum(
        json.loads((default.dictionary_dir(name) / "cfg.json").read_text())["d_sae"]
        for name in default.DICTIONARY_NAMES
    )
    assert table.num_rows == 4 * n_features  # Logit Lens and Query Lens, both sides, every feature
    assert set(table.column("lens").to_pylist()) == {
        "logit_lens_value",
        "logit_lens_key",
        "query_lens_value",
        "query_lens_key",
    }
    html = (out / "viewer.html").read_text()
    assert "<html" in html.lower() and "query_lens_value" in html
    printed = capsys.readouterr().out
    assert "Query Lens value (promotes)" in printed and "Feature " in printed
