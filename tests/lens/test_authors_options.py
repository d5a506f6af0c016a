"""The authors' analysis options (`submodule`, the three layer-norm Jacobian toggles) give the
top-25 lists of the authors' own code (their `analysis/jvp.py` and `analysis/vjp.py` on
TransformerLens, imported from their checkout), on both paths, on a tiny GPT-2 and an SAE at
`resid_post`; and the dense and per-feature paths agree to 1e-4.

Their `run.py` builds the key side's cache for the submodule only, and their `vjp.py` then
fails on it; their `vjp.py` needs the full cache and applies `submodule` itself, so their
caches are built here with `module_type="all"`, as for `submodule=both`.
"""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import converters
import qlens_jax
from benchmarks import authors, reference_torch as ref
from converters.dictionaries.neurons import neuron_dictionary
from kernel_fixtures import random_dictionary
from qlens_jax.lens import TransportOperators
from qlens_jax.lens.lens_spec import parse_lens
from qlens_jax.lens.options import ExecutionOptions, LensOptions
from qlens_jax.lens.validation import LensRequestError
from tiny_models import build_hf_model

torch = pytest.importorskip("torch")
# TransformerLens deprecates HookedTransformer, which the authors' code is written against
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

K = 25
LAYER = 1
FEATURES = [3, 11]
LENSES = ("query_lens_value", "query_lens_key", "first_order_value", "first_order_key")
CASES = {
    "attn": dict(submodule="attn"),
    "mlp": dict(submodule="mlp"),
    "no-norms": dict(jvp_norm=False, vjp_norm=False),
    "no-jvp-norm": dict(jvp_norm=False),
    "no-unembed-norm": dict(unembed_norm=False),
}


@pytest.fixture(scope="module")
def world(authors_repo, tmp_path_factory):
    """The tiny GPT-2 (Hugging Face, converted; and in TransformerLens), a sample without
    padding, one SAE, and the authors' modules."""
    root = tmp_path_factory.mktemp("authors-options")
    hf = build_hf_model("gpt2", seed=3)
    hf.config.n_ctx = hf.config.n_positions
    hf.save_pretrained(root / "model")
    authors.save_word_tokenizer(hf.config.vocab_size, root / "model")
    model = converters.load_model(hf)
    tokens = np.random.default_rng(5).integers(0, hf.config.vocab_size - 1, size=(4, 9))
    dictionary = random_dictionary(model.config.d_model, LAYER, "resid_post", "resid_post", "sae", 8)
    sae = authors.make_sae(np.array(dictionary.W_enc), np.array(dictionary.W_dec), LAYER)
    sys.path.insert(0, str(authors_repo))
    here = os.getcwd()
    os.chdir(root)
    try:
        from analysis import common, jvp, vjp  # pyright: ignore[reportMissingImports]
        from util import Feature  # pyright: ignore[reportMissingImports]

        tl = authors.load_transformer_lens("model", "cpu", "float32")
    finally:
        os.chdir(here)
        sys.path.remove(str(authors_repo))
    return dict(
        hf=hf,
        model=model,
        tokens=tokens,
        dictionary=dictionary,
        sae=sae,
        tl=tl,
        common=common,
        jvp=jvp,
        vjp=vjp,
        Feature=Feature,
    )


def theirs(
    world, lens: str, feature: int, submodule="both", jvp_norm=True, vjp_norm=True, unembed_norm=True, neurons=False
):
    """Their top-25 ids of `feature` under `lens` (their `analyze_feature`, their caches; with
    `neurons`, MLP neuron `feature` of the layer: their `sae=None`)."""
    side = "value" if lens.endswith("value") else "key"
    norm = jvp_norm if side == "value" else vjp_norm
    build = world["common"].VJPResidCache if side == "key" else world["common"].ResidCache
    extra = {"cache_embed": True} if side == "key" else {}
    pile = torch.as_tensor(world["tokens"], dtype=torch.long)
    cache = build.build_for_local_pile_sample(
        model=world["tl"],
        local_pile_sample=pile,
        accumulation_steps=1,
        module_type="all",
        return_device="cpu",
        pad_token_id=-1,
        use_layer_norm=norm,
        **extra,
    )
    args = dict(
        model=world["tl"],
        f=world["Feature"](model_id="tiny", feature=feature, layer=LAYER, type="sae"),
        sae=None if neurons else world["sae"],
        pile_sample=pile,
        rank=0,
        world_size=1,
        stream_transition="full" if lens.startswith("query_lens") else "first_order",
        submodule=submodule,
        k=K,
        accumulation_steps=1,
        resid_cache=cache,
    )
    if side == "value":
        result = world["jvp"].analyze_feature(**args, use_unembed_layer_norm=unembed_norm, use_jvp_layer_norm=norm)
    else:
        result = world["vjp"].analyze_feature(**args, use_vjp_layer_norm=norm)
    return [int(i) for i in result["top_ids"]]


def ours(world, path: str, dictionary=None, lenses=LENSES, **options):
    return qlens_jax.query_lens(
        world["model"],
        [world["dictionary"] if dictionary is None else dictionary],
        world["tokens"],
        np.ones(world["tokens"].shape, bool),
        lenses=lenses,
        features=FEATURES,
        options=LensOptions(k=K, **options),
        execution=ExecutionOptions(path=path, sequences_per_chunk=2),
    )


def reference(world, lens: str, **options):
    """`benchmarks/reference_torch.py`'s scores of the requested features under `lens`."""
    d = world["dictionary"]
    vectors = np.asarray(d.value_vectors() if lens.endswith("value") else d.key_vectors())[FEATURES]
    tokens = world["tokens"]
    return ref.reference_scores(
        world["hf"], tokens, np.ones(tokens.shape, bool), lens, vectors, "resid_post", LAYER, **options
    )


@pytest.mark.parametrize("case", list(CASES))
def test_options_give_the_authors_lists_on_both_paths(world, case):
    """Both paths give the authors' top-25 and agree with each other and with reference_torch to 1e-4."""
    options = CASES[case]
    dense, per_feature = ours(world, "dense", **options), ours(world, "per-feature", **options)
    default = ours(world, "per-feature")
    changed = False
    for lens in LENSES:
        d, p = dense.get(lens), per_feature.get(lens)
        scores = reference(world, lens, **options)
        expected_scores = np.take_along_axis(scores, np.asarray(p.top_ids), 1)
        scale = np.abs(scores).max(axis=1, keepdims=True)
        for table in (d, p):
            np.testing.assert_allclose(table.top_scores / scale, expected_scores / scale, atol=1e-4, rtol=0)
        for row, feature in enumerate(FEATURES):
            expected = theirs(world, lens, feature, **options)
            assert list(p.top_ids[row]) == expected, (case, lens, feature)
            assert list(d.top_ids[row]) == expected, (case, lens, feature)
        changed |= not np.array_equal(p.top_scores, default.get(lens).top_scores)
    assert changed  # the option changes the numbers


@pytest.mark.parametrize("case", ["default", "attn"])
def test_mlp_neurons_give_the_authors_lists(world, case):
    """`--dictionary neurons`: neuron i's key is `W_in[:, i]`, its value `W_out[i]`, as the
    authors' code takes them with `sae=None` (their MLP at the neuron's layer skipped on the key side)."""
    options = {} if case == "default" else CASES[case]
    neurons = neuron_dictionary(world["model"], LAYER)
    dense, per_feature = ours(world, "dense", neurons, **options), ours(world, "per-feature", neurons, **options)
    for lens in LENSES:
        np.testing.assert_allclose(dense.get(lens).top_scores, per_feature.get(lens).top_scores, rtol=1e-4, atol=1e-5)
        for row, feature in enumerate(FEATURES):
            expected = theirs(world, lens, feature, neurons=True, **options)
            assert list(per_feature.get(lens).top_ids[row]) == expected, (case, lens, feature)
            assert list(dense.get(lens).top_ids[row]) == expected, (case, lens, feature)


SPECS = ("value:identity:embed", "value:identity:embed_cosine_centered", "key:identity:unembed")
SPECS += ("key:identity:embed_cosine_centered", "logit_lens_value", "logit_lens_key")


@pytest.mark.parametrize("unembed_norm", [True, False])
def test_identity_specs_read_out_as_the_authors_analyze_identity(world, unembed_norm):
    """`VECTOR:identity:READOUT` specs: the readouts of the authors' `analyze_identity` (their
    `apply_unembed` / `apply_embed` / `apply_embed_cosine_centered`, then `get_logits_tokens`;
    `run.py` itself needs hydra, so its three-line dispatch is written out here)."""
    common, tl = world["common"], world["tl"]
    signatures = ours(world, "per-feature", lenses=SPECS, unembed_norm=unembed_norm)
    assert [t.lens for t in signatures] == list(SPECS)
    readouts = {
        "unembed": lambda vec: common.apply_unembed(tl, vec, use_ln_final=unembed_norm).view(-1),
        "embed": lambda vec: common.apply_embed(tl, vec),
        "embed_cosine_centered": lambda vec: common.apply_embed_cosine_centered(tl, vec),
    }
    for spec in SPECS:
        lens = parse_lens(spec)
        for row, feature in enumerate(FEATURES):
            f = world["Feature"](model_id="tiny", feature=feature, layer=LAYER, type="sae")
            get = common.get_feature_vector if lens.vector == "value" else common.get_feature_input_vector
            logits = readouts[lens.readout](get(tl, f, world["sae"]))
            _, (top_ids, _) = common.get_logits_tokens(tl, logits, K)
            assert list(signatures.get(spec).top_ids[row]) == [int(i) for i in top_ids[0]], (spec, feature)


def test_neurons_decode_to_the_mlp_output(world):
    """The neurons' activations are the model's: decoding them all gives back the MLP's output."""
    model, tokens = world["model"], world["tokens"]
    neurons = neuron_dictionary(model, LAYER)
    _, residuals = model.run_with_residuals(jnp.asarray(tokens), jnp.ones(tokens.shape, bool))
    np.testing.assert_allclose(
        neurons.decode(neurons.encode(residuals.mlp_in[LAYER])), residuals.mlp_out[LAYER], atol=1e-5
    )


def test_submodule_on_a_lens_without_transport_is_refused_by_name(world):
    with pytest.raises(LensRequestError, match="submodule='attn' has no meaning for logit_lens_value"):
        qlens_jax.query_lens(
            world["model"],
            [world["dictionary"]],
            world["tokens"],
            lenses=("query_lens_value", "logit_lens_value"),
            features=FEATURES,
            options=LensOptions(submodule="attn"),
        )
    with pytest.raises(LensRequestError, match="operators= cannot be used with submodule='mlp'"):
        qlens_jax.query_lens(
            world["model"],
            [world["dictionary"]],
            world["tokens"],
            features=FEATURES,
            options=LensOptions(submodule="mlp"),
            operators=TransportOperators(value=None, key=None, first_order=None, first_order_all=None, n_tokens=1),
        )
    with pytest.raises(LensRequestError, match="submodule 'att' is not one of both, attn, mlp"):
        qlens_jax.query_lens(
            world["model"],
            [world["dictionary"]],
            world["tokens"],
            features=FEATURES,
            options=LensOptions(submodule="att"),
        )
