"""Tuned lens: training lowers the held-out KL; Orbax and tuned-lens-library files round-trip;
the signatures read the translated value vectors; errors name what is missing."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import converters
from qlens_jax.baselines import (
    TunedLens,
    TunedLensTraining,
    all_points,
    baseline_signatures,
    heldout_kl,
    library_points,
    load_tuned_lens,
    load_tuned_lens_library,
    save_tuned_lens,
    save_tuned_lens_library,
    train_tuned_lens,
)
from qlens_jax.errors import InputError
from qlens_jax.lens.options import LensOptions
from qlens_jax.lens.validation import LensRequestError
from qlens_jax.readout import value_scores
from splice_reference import make_dictionary
from tiny_models import build_hf_model


@pytest.fixture(scope="module")
def gpt2():
    hf = build_hf_model("gpt2", seed=0)
    return hf, converters.load_model(hf)


def _windows(vocab, n, seq, seed):
    """Token windows from a seeded Markov chain (some structure for the lens to learn)."""
    rng = np.random.default_rng(seed)
    chain = np.random.default_rng(123).integers(3, vocab, size=(vocab, 4))
    out = np.empty((n, seq), np.int32)
    out[:, 0] = rng.integers(3, vocab, size=n)
    for t in range(1, seq):
        out[:, t] = chain[out[:, t - 1], rng.integers(0, 4, size=n)]
    return out


def _random_lens(model, points, seed=0):
    rng = np.random.default_rng(seed)
    d = model.config.d_model
    return TunedLens(
        jnp.asarray(0.1 * rng.normal(size=(len(points), d, d)), jnp.float32),
        jnp.asarray(0.1 * rng.normal(size=(len(points), d)), jnp.float32),
        tuple(points),
        model.config.n_layers,
    )


@pytest.mark.parametrize("optimizer, lr", [("sgd_nesterov", 1.0), ("adam", 1e-2)])
def test_training_lowers_heldout_kl(gpt2, optimizer, lr):
    _, model = gpt2
    vocab = model.config.vocab_size
    train, held = _windows(vocab, 64, 12, seed=0), _windows(vocab, 16, 12, seed=1)
    options = TunedLensTraining(steps=60, batch_sequences=8, optimizer=optimizer, learning_rate=lr)
    lens, record = train_tuned_lens(
        model, train, points=all_points(model.config.n_layers), options=options, heldout=(held, None)
    )
    identity, trained = np.asarray(record.heldout_kl_identity), np.asarray(record.heldout_kl_trained)
    assert identity.shape == (2 * model.config.n_layers,)
    assert (identity > 0.05).all(), identity  # the logit lens is off, so there is something to learn
    assert (trained < 0.7 * identity).all(), (identity, trained)
    assert record.train_loss[-1] < record.train_loss[0]
    np.testing.assert_allclose(heldout_kl(model, lens, held), trained, rtol=1e-5)


def test_identity_lens_is_the_logit_lens(gpt2):
    _, model = gpt2
    lens = TunedLens.identity(model.config.n_layers, model.config.d_model)
    v = jnp.asarray(np.random.default_rng(0).normal(size=(3, model.config.d_model)), jnp.float32)
    for point in (*lens.points, 2 * model.config.n_layers):
        np.testing.assert_array_equal(lens.translate(v, point), v)


@pytest.mark.parametrize("name", ["lens", "lens[1]"])  # a glob character in the path is taken literally
def test_orbax_round_trip(gpt2, tmp_path, name):
    _, model = gpt2
    lens = _random_lens(model, all_points(model.config.n_layers))
    (tmp_path / "lens1").mkdir()  # what `lens[1]` would match as a pattern
    save_tuned_lens(lens, tmp_path / name, record={"note": "test"})
    loaded = load_tuned_lens(tmp_path / name, model)
    assert loaded.points == lens.points and loaded.n_layers == lens.n_layers
    np.testing.assert_array_equal(loaded.weight, lens.weight)
    np.testing.assert_array_equal(loaded.bias, lens.bias)
    assert json.loads((tmp_path / name / "tuned_lens.json").read_text())["training"] == {"note": "test"}


def test_reads_tuned_lens_library_files(gpt2, tmp_path):
    """A folder written exactly as the library's `TunedLens.save` does (torch.save of the
    translators' ModuleList state dict + config.json), read and applied as the library does:
    `h + translator(h)` on hidden state i."""
    hf, model = gpt2
    d, n_layers = model.config.d_model, model.config.n_layers
    torch.manual_seed(0)
    translators = torch.nn.ModuleList([torch.nn.Linear(d, d) for _ in range(n_layers)])
    folder = tmp_path / "gpt2-lens"
    folder.mkdir()
    torch.save(translators.state_dict(), folder / "params.pt")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "base_model_name_or_path": "tiny",
                "d_model": d,
                "num_hidden_layers": n_layers,
                "bias": True,
                "base_model_revision": None,
                "unembed_hash": None,
                "lens_type": "linear_tuned_lens",
            }
        )
    )
    lens = load_tuned_lens(folder, model)
    assert lens.points == library_points(n_layers)
    with torch.no_grad():
        hidden = hf(torch.arange(3, 9)[None], output_hidden_states=True).hidden_states
        for i in range(n_layers):
            expected = (hidden[i] + translators[i](hidden[i]))[0].numpy()
            ours = lens.translate(jnp.asarray(hidden[i][0].numpy()), 2 * i)
            np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    # Prefixed keys, safetensors, and our writer give the same lens.
    torch.save({f"layer_translators.{k}": v for k, v in translators.state_dict().items()}, tmp_path / "prefixed.pt")
    prefixed = load_tuned_lens_library(tmp_path / "prefixed.pt", model)
    save_tuned_lens_library(lens, tmp_path / "ours", file="params.safetensors")
    for other in (prefixed, load_tuned_lens(tmp_path / "ours", model)):
        np.testing.assert_array_equal(other.weight, lens.weight)
        np.testing.assert_array_equal(other.bias, lens.bias)


def test_library_files_errors(gpt2, tmp_path):
    _, model = gpt2
    d = model.config.d_model
    torch.save({"0.weight": torch.zeros(d, d), "0.bias": torch.zeros(d)}, tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(json.dumps({"d_model": d, "num_hidden_layers": model.config.n_layers}))
    with pytest.raises(InputError, match="translator 1 weight missing"):
        load_tuned_lens(tmp_path, model)
    torch.save(
        {
            f"{i}.{n}": torch.zeros(d, d) if n == "weight" else torch.zeros(d)
            for i in range(3)
            for n in ("weight", "bias")
        }
        | {"extra": torch.zeros(1)},
        tmp_path / "params.pt",
    )
    with pytest.raises(InputError, match="keys not understood"):
        load_tuned_lens(tmp_path, model)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": d + 1, "num_hidden_layers": 3}))
    with pytest.raises(InputError, match="width"):
        load_tuned_lens(tmp_path, model)


def test_tuned_lens_signatures(gpt2):
    _, model = gpt2
    n_layers, d = model.config.n_layers, model.config.d_model
    lens = _random_lens(model, all_points(n_layers), seed=3)
    tokens = _windows(model.config.vocab_size, 4, 8, seed=2)
    dictionaries = [
        make_dictionary(d, 0, "resid_post", "resid_post", "sae", 1),
        make_dictionary(d, 1, "resid_mid", "resid_mid", "sae", 2),
        make_dictionary(d, n_layers - 1, "resid_post", "resid_post", "sae", 3),
    ]
    sigs = baseline_signatures(
        model,
        dictionaries,
        tokens,
        lenses=("tuned_lens", "tuned_lens_linear"),
        features=[2, 5],
        options=LensOptions(k=5),
        translators=lens,
    )
    assert [t.lens for t in sigs] == ["tuned_lens"] * 3 + ["tuned_lens_linear"] * 3
    for table, dictionary, point in zip(sigs, dictionaries * 2, (2, 3, 2 * n_layers) * 2):
        v = dictionary.W_dec[jnp.asarray([2, 5])]
        bias = lens.bias[point] if table.lens == "tuned_lens" else 0.0
        translated = v if point == 2 * n_layers else v + v @ lens.weight[point].T + bias
        scores = np.asarray(value_scores(model, translated))
        np.testing.assert_array_equal(table.top_ids, np.argsort(-scores, axis=1)[:, :5])
        np.testing.assert_allclose(table.top_scores, np.sort(scores, axis=1)[:, ::-1][:, :5], rtol=1e-5)


def test_tuned_lens_at_the_dictionary_layer_as_the_authors_apply_it(gpt2):
    """`tuned_lens_point_choice="layer"`: a resid_post[l] feature goes through the library's
    translator l (that of resid_pre[l]), `v + W_l v + b_l`, and the last layer's through none,
    as the authors' `apply_layer_params_to_feature` does."""
    _, model = gpt2
    n_layers, d = model.config.n_layers, model.config.d_model
    lens = _random_lens(model, library_points(n_layers), seed=4)
    tokens = _windows(model.config.vocab_size, 2, 6, seed=2)
    dictionaries = [
        make_dictionary(d, layer, "resid_post", "resid_post", "sae", 7 + layer) for layer in (0, 1, n_layers - 1)
    ]
    sigs = baseline_signatures(
        model,
        dictionaries,
        tokens,
        lenses=("tuned_lens",),
        features=[1, 4],
        options=LensOptions(k=5),
        translators=lens,
        tuned_lens_point_choice="layer",
    )
    for table, dictionary in zip(sigs, dictionaries):
        v = dictionary.W_dec[jnp.asarray([1, 4])]
        layer = dictionary.layer
        translated = v if layer == n_layers - 1 else v + v @ lens.weight[layer].T + lens.bias[layer]
        scores = np.asarray(value_scores(model, translated))
        np.testing.assert_array_equal(table.top_ids, np.argsort(-scores, axis=1)[:, :5])
    written = baseline_signatures(
        model,
        dictionaries[:1],
        tokens,
        lenses=("tuned_lens",),
        features=[1, 4],
        options=LensOptions(k=5),
        translators=lens,
    )
    assert not np.array_equal(written[0].top_scores, sigs[0].top_scores)  # layer 0's written point is resid_pre[1]
    with pytest.raises(LensRequestError, match="tuned_lens_point 'x'"):
        baseline_signatures(
            model, dictionaries, tokens, lenses=("tuned_lens",), translators=lens, tuned_lens_point_choice="x"
        )


def test_tuned_lens_needs_translators_at_the_write_point(gpt2):
    _, model = gpt2
    d = model.config.d_model
    tokens = _windows(model.config.vocab_size, 2, 6, seed=0)
    mid = make_dictionary(d, 1, "resid_mid", "resid_mid", "sae", 2)
    with pytest.raises(LensRequestError, match="need translators"):
        baseline_signatures(model, [mid], tokens, lenses=("tuned_lens",))
    with pytest.raises(LensRequestError, match=r"writes at resid_mid\[1\].*no translator"):
        baseline_signatures(
            model, [mid], tokens, lenses=("tuned_lens",), translators=TunedLens.identity(model.config.n_layers, d)
        )
    with pytest.raises(LensRequestError, match="unknown baseline lens"):
        baseline_signatures(model, [mid], tokens, lenses=("zero_in",))
