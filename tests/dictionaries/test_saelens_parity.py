"""Every architecture the pinned sae_lens writes: built and saved by sae_lens itself, loaded by
`converters.load_dictionary`, and compared with sae_lens's own encode / decode / forward."""

import json
import warnings

import numpy as np
import pytest
import torch

from converters import load_dictionary
from converters.dictionaries import saelens as saelens_converter
from dictionary_helpers import (
    D_IN,
    D_SAE,
    assert_close,
    assert_sparse_but_active,
    inputs,
    np_topk,
)
from qlens_jax.dictionaries import DictionaryError

SAE_HOOK = "blocks.2.hook_resid_post"
TC_HOOKS = {"hook_name": "blocks.1.ln2.hook_normalized", "hook_name_out": "blocks.1.hook_mlp_out"}


def randomize(sae, seed: int) -> None:
    """Seeded random parameters with non-trivial biases and thresholds (some negative)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 1.2 - 0.2)
            elif name == "r_mag":
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


INFERENCE_CLASSES = {
    "standard": "StandardSAE",
    "gated": "GatedSAE",
    "jumprelu": "JumpReLUSAE",
    "topk": "TopKSAE",
    "abstopk": "AbsTopKSAE",
    "transcoder": "Transcoder",
    "skip_transcoder": "SkipTranscoder",
    "jumprelu_transcoder": "JumpReLUTranscoder",
    "jumprelu_skip_transcoder": "JumpReLUSkipTranscoder",
}
TRAINING_CLASSES = {
    "standard": "StandardTrainingSAE",
    "gated": "GatedTrainingSAE",
    "jumprelu": "JumpReLUTrainingSAE",
    "topk": "TopKTrainingSAE",
    "batchtopk": "BatchTopKTrainingSAE",
    "matryoshka_batchtopk": "MatryoshkaBatchTopKTrainingSAE",
}


def make(sl, arch: str, *, training=False, **cfg):
    """A sae_lens SAE of `arch` (inference or training class) whose metadata names its hooks."""
    from sae_lens.saes.sae import SAEMetadata

    name = (TRAINING_CLASSES if training or "batchtopk" in arch else INFERENCE_CLASSES)[arch]
    hooks = {"hook_name": SAE_HOOK}
    if "transcoder" in arch:
        cfg = {"d_out": D_IN, "apply_b_dec_to_input": False, **cfg}
        hooks = TC_HOOKS
    config = getattr(sl, name + "Config")(
        d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(model_name="tiny", **hooks), **cfg
    )
    sae = getattr(sl, name)(config)
    sae.eval()
    return sae


# name -> (architecture, config kwargs)
INFERENCE_CASES = {
    "standard": ("standard", {}),
    "standard-no-b_dec-on-input": ("standard", {"apply_b_dec_to_input": False}),
    "standard-constant_norm_rescale": ("standard", {"normalize_activations": "constant_norm_rescale"}),
    "gated": ("gated", {}),
    "gated-layer_norm": ("gated", {"normalize_activations": "layer_norm"}),
    "jumprelu": ("jumprelu", {}),
    "jumprelu-no-b_dec-on-input": ("jumprelu", {"apply_b_dec_to_input": False}),
    "topk": ("topk", {"k": 5}),
    "topk-layer_norm": ("topk", {"k": 5, "normalize_activations": "layer_norm"}),
    "topk-rescale-by-decoder-norm": ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    "abstopk": ("abstopk", {"k": 5}),
    "transcoder": ("transcoder", {}),
    "transcoder-layer_norm": ("transcoder", {"normalize_activations": "layer_norm"}),
    "skip_transcoder": ("skip_transcoder", {}),
    "jumprelu_transcoder": ("jumprelu_transcoder", {}),
    "jumprelu_skip_transcoder": ("jumprelu_skip_transcoder", {}),
}


def compare(ours, theirs, x_np) -> None:
    """encode, decode (of sae_lens's activations) and the full forward pass, to 1e-5."""
    x = torch.from_numpy(x_np)
    with torch.no_grad():
        their_acts = theirs.encode(x)
        their_decoded = theirs.decode(their_acts)  # after encode: uses its stored norm stats
        their_forward = theirs(x)
    our_acts = ours.encode(x_np)
    assert_sparse_but_active(their_acts.numpy())
    assert_close(our_acts, their_acts.numpy())
    assert_close(ours.decode(their_acts.numpy(), x_np), their_decoded.numpy())
    assert_close(ours.reconstruct(x_np), their_forward.numpy())


@pytest.mark.parametrize("case", sorted(INFERENCE_CASES))
def test_inference_architectures_match_sae_lens(sae_lens, case, tmp_path, model):
    arch, cfg = INFERENCE_CASES[case]
    sae = make(sae_lens, arch, **cfg)
    randomize(sae, seed=len(case))
    sae.save_model(tmp_path)
    ours = load_dictionary(tmp_path, model)
    compare(ours, sae, inputs())
    # and the same SAE object straight from memory
    compare(load_dictionary(sae, model), sae, inputs(seed=1))
    is_tc = "transcoder" in arch
    assert ours.kind == ("transcoder" if is_tc else "sae")
    placement = (1, "mlp_in", "mlp_out") if is_tc else (2, "resid_post", "resid_post")
    assert (ours.layer, ours.site_in, ours.site_out) == placement
    assert ours.key_vectors().shape == (D_SAE, D_IN) and ours.value_vectors().shape == (D_SAE, D_IN)
    np.testing.assert_array_equal(ours.key_vectors(), sae.W_enc.detach().numpy().T)
    np.testing.assert_array_equal(ours.value_vectors(), sae.W_dec.detach().numpy())


def test_every_registered_sae_lens_architecture_is_covered_or_refused(sae_lens):
    """If a sae_lens upgrade registers a new architecture, this fails until it is handled."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    registered = set(SAE_CLASS_REGISTRY) | set(SAE_TRAINING_CLASS_REGISTRY)
    handled = set(saelens_converter.ARCHITECTURES) | set(saelens_converter.UNSUPPORTED)
    assert registered <= handled, registered - handled
    tested = {arch for arch, _ in INFERENCE_CASES.values()} | {"batchtopk", "matryoshka_batchtopk"}
    assert set(saelens_converter.ARCHITECTURES) <= tested


@pytest.mark.parametrize(
    "name,cfg,match",
    [
        ("TemporalSAE", {"n_heads": 1, "bottleneck_factor": 4, "kval_topk": 4}, "attend over earlier tokens"),
        ("MatchingPursuitSAE", {}, "iterative pursuit"),
    ],
)
def test_non_linear_encoders_saved_by_sae_lens_are_refused(sae_lens, name, cfg, match, tmp_path, model):
    from sae_lens.saes.sae import SAEMetadata

    config = getattr(sae_lens, name + "Config")(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=SAE_HOOK), **cfg)
    sae = getattr(sae_lens, name)(config)
    sae.save_model(tmp_path)
    with pytest.raises(DictionaryError, match=match):
        load_dictionary(tmp_path, model)
    with pytest.raises(DictionaryError, match=match):
        load_dictionary(sae, model)


def test_batch_topk_function_matches_sae_lens(sae_lens):
    """The training-time activation itself (batch-level top-k) as a pure function."""
    from sae_lens.saes.batchtopk_sae import BatchTopK

    from qlens_jax.dictionaries.activations import batch_topk

    pre = inputs((3, 4, D_SAE), seed=12)
    expected = BatchTopK(2.5)(torch.from_numpy(pre)).numpy()
    assert_close(batch_topk(pre, 2.5), expected)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("rescale", [True, False])
def test_batchtopk_matches_sae_lens_inference_conversion(sae_lens, arch, rescale, tmp_path, model):
    """BatchTopK trains with a batch-level top-k and is saved as JumpReLU; both our reading
    of the training checkpoint and of sae_lens's inference save match sae_lens's JumpReLU."""
    extra = {"matryoshka_widths": [16, D_SAE]} if arch == "matryoshka_batchtopk" else {}
    sae = make(sae_lens, arch, k=5, rescale_acts_by_decoder_norm=rescale, **extra)
    randomize(sae, seed=3)
    sae.topk_threshold.fill_(0.4)
    sae.save_model(tmp_path / "train")
    sae.save_inference_model(tmp_path / "inference")
    assert json.loads((tmp_path / "train" / "cfg.json").read_text())["architecture"] == arch
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "inference")
    assert theirs.cfg.architecture() == "jumprelu"
    for source in (tmp_path / "train", tmp_path / "inference", sae):
        ours = load_dictionary(source, model)
        assert ours.activation == "jumprelu"
        compare(ours, theirs, inputs(seed=2))


@pytest.mark.parametrize("arch,cfg", [("topk", {"k": 5}), ("jumprelu", {}), ("gated", {}), ("standard", {})])
def test_training_checkpoints_match_sae_lens(sae_lens, arch, cfg, tmp_path, model):
    """A trainer checkpoint (`save_model` of the training class, training config fields and
    all) reads like the inference model sae_lens derives from it."""
    sae = make(sae_lens, arch, training=True, **cfg)
    randomize(sae, seed=5)
    sae.save_model(tmp_path / "train")
    sae.save_inference_model(tmp_path / "inference")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "inference")
    compare(load_dictionary(tmp_path / "train", model), theirs, inputs(seed=3))


def test_expected_average_only_in_needs_and_folds_the_factor(sae_lens, tmp_path, model):
    sae = make(sae_lens, "jumprelu", normalize_activations="expected_average_only_in")
    randomize(sae, seed=7)
    sae.save_model(tmp_path)
    with pytest.raises(DictionaryError, match="norm_scaling_factor"):
        load_dictionary(tmp_path, model)
    factor = 0.37
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    theirs.fold_activation_norm_scaling_factor(factor)  # what sae_lens's from_pretrained does
    folded = load_dictionary(tmp_path, model, norm_scaling_factor=factor)
    explicit = load_dictionary(tmp_path, model, norm_scaling_factor=factor, fold_norm_scaling_factor=False)
    assert folded.input_norm == "none" and explicit.input_norm == "scale"
    for ours in (folded, explicit):
        compare(ours, theirs, inputs(seed=4))
    assert_close(folded.key_vectors(), explicit.key_vectors() * factor)


def test_sparsity_file_is_read(sae_lens, tmp_path, model):
    from safetensors.torch import save_file

    sae = make(sae_lens, "standard")
    randomize(sae, seed=8)
    sae.save_model(tmp_path)
    log_density = torch.randn(D_SAE)
    log_density[3] = -float("inf")  # a dead feature
    save_file({"sparsity": log_density}, tmp_path / "sparsity.safetensors")
    ours = load_dictionary(tmp_path, model)
    np.testing.assert_array_equal(ours.log_sparsity, log_density.numpy())


def _write_pre_6(tmp_path, sae, cfg: dict):
    sae.save_model(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))


PRE_6_BASE = {
    "model_name": "gpt2-small",
    "hook_point_layer": 1,
    "hook_point_head_index": None,
    "d_in": D_IN,
    "d_sae": D_SAE,
    "dtype": "float32",
    "device": "cpu",
    "context_size": 64,
    "dataset_path": "Skylion007/openwebtext",
    "prepend_bos": True,
    "sae_lens_training_version": "3.13.0",
}


def test_pre_6_openai_republished_topk_layer_norm(sae_lens, tmp_path, model):
    """The sae_lens republication of OpenAI's GPT-2 SAEs: a flat pre-6.0 config with
    `activation_fn_str: topk`, `normalize_activations: layer_norm`. Checked against sae_lens's
    own pre-6 handling and against OpenAI's formula written out in numpy."""
    sae = make(sae_lens, "topk", k=5)
    randomize(sae, seed=9)
    _write_pre_6(
        tmp_path,
        sae,
        {
            **PRE_6_BASE,
            "hook_point": "blocks.1.hook_resid_mid",
            "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 5},
            "apply_b_dec_to_input": True,
            "normalize_activations": "layer_norm",
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
    ours = load_dictionary(tmp_path, model)
    assert (ours.layer, ours.site_in, ours.activation, ours.k) == (1, "resid_mid", "topk", 5)
    x = inputs(seed=5)
    compare(ours, theirs, x)
    # OpenAI's model.py: LN, subtract pre_bias, encoder, TopK(ReLU), decoder, undo LN
    p = {k: v.detach().numpy() for k, v in sae.state_dict().items()}
    mu = x.mean(-1, keepdims=True)
    std = (x - mu).std(-1, keepdims=True, ddof=1)
    latents = np_topk(((x - mu) / (std + 1e-5) - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 5)
    assert_close(ours.encode(x), latents)
    assert_close(ours.reconstruct(x), (latents @ p["W_dec"] + p["b_dec"]) * std + mu)


def test_pre_6_standard_with_boolean_normalization(sae_lens, tmp_path, model):
    sae = make(sae_lens, "standard")
    randomize(sae, seed=10)
    base = {**PRE_6_BASE, "hook_point": "blocks.3.hook_resid_pre", "hook_point_layer": 3, "activation_fn_str": "relu"}
    _write_pre_6(tmp_path, sae, {**base, "normalize_activations": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
    ours = load_dictionary(tmp_path, model, layer=3)
    assert (ours.layer, ours.site_in, ours.apply_b_dec_to_input) == (3, "resid_pre", True)
    compare(ours, theirs, inputs(seed=6))
    _write_pre_6(tmp_path, sae, {**base, "normalize_activations": True})
    with pytest.raises(DictionaryError, match="expected_average_only_in"):
        load_dictionary(tmp_path, model)
    _write_pre_6(tmp_path, sae, {**base, "activation_fn_str": "tanh-relu"})
    with pytest.raises(DictionaryError, match="tanh-relu"):
        load_dictionary(tmp_path, model)


def test_dtype_is_kept_unless_given(sae_lens, tmp_path, model):
    import jax.numpy as jnp

    sae = make(sae_lens, "standard", dtype="bfloat16")
    randomize(sae, seed=11)
    sae.save_model(tmp_path)
    assert load_dictionary(tmp_path, model).W_enc.dtype == jnp.bfloat16
    assert load_dictionary(tmp_path, model, dtype="float32").W_enc.dtype == jnp.float32
