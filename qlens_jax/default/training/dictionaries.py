"""TopK SAEs on `resid_post` and a ReLU transcoder of one MLP, trained on cached activations.

Training works on scaled activations `x / c` with `c` chosen so that `E||x / c||^2 = d`
(SAELens' "expected_average_only_in" convention); the scale is folded back into the saved
weights exactly, so the saved dictionaries read and write the model's raw activations and
their cfg says `normalize_activations: "none"`:

    TopK SAE (apply_b_dec_to_input):  W_enc <- W_enc / c,  W_dec <- c W_dec,  b_dec <- c b_dec
    transcoder (input c_in, output c_out): W_enc <- W_enc / c_in,  W_dec <- c_out W_dec,  b_dec <- c_out b_dec

TopK SAE (Gao et al. 2024): unit-norm decoder rows (renormalized after each step), encoder
initialized to the decoder's transpose, `b_dec` initialized to the data mean, AuxK loss on
latents that have not fired for `dead_after_tokens` tokens. Activation: top-k of the
pre-activation, then ReLU (as SAELens' TopK).

ReLU transcoder (SAELens architecture "transcoder": `relu(x W_enc + b_enc) W_dec + b_dec`):
loss = normalized MSE + lambda * sum_i a_i ||W_dec[i]||, with lambda steered in log space
towards a target mean L0 (a feedback controller, so no sweep is needed).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qlens_jax.default.training.export import save_saelens
from qlens_jax.default.training.gpt2 import GPT2

# The sae_lens release whose cfg.json layout is written (the project pins sae_lens 6.54).
SAELENS_FORMAT_VERSION = "6.54.12"


@dataclasses.dataclass(frozen=True)
class DictionarySpec:
    name: str
    kind: str  # "sae" (TopK) | "transcoder" (ReLU)
    layer: int
    site_in: str  # "resid_post" | "mlp_in"
    site_out: str  # "resid_post" | "mlp_out"
    hook_name: str
    hook_name_out: str
    d_sae: int = 2048
    k: int = 16  # TopK only
    target_l0: float = 24.0  # transcoder only
    steps: int = 400
    batch_size: int = 4096
    lr: float = 2e-3
    warmup_steps: int = 30
    final_lr_fraction: float = 0.1
    aux_k: int = 32
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 200_000
    l1_init: float = 1e-3  # transcoder: initial lambda
    l1_rate: float = 0.1  # transcoder: log-lambda step per unit relative L0 error


def default_specs(n_layers: int, transcoder_layer: int) -> list[DictionarySpec]:
    specs = [
        DictionarySpec(
            name=f"resid-post-{layer}",
            kind="sae",
            layer=layer,
            site_in="resid_post",
            site_out="resid_post",
            hook_name=f"blocks.{layer}.hook_resid_post",
            hook_name_out=f"blocks.{layer}.hook_resid_post",
        )
        for layer in range(n_layers)
    ]
    specs.append(
        DictionarySpec(
            name=f"transcoder-mlp-{transcoder_layer}",
            kind="transcoder",
            layer=transcoder_layer,
            site_in="mlp_in",
            site_out="mlp_out",
            hook_name=f"blocks.{transcoder_layer}.ln2.hook_normalized",
            hook_name_out=f"blocks.{transcoder_layer}.hook_mlp_out",
        )
    )
    return specs


def spec_index(spec: DictionarySpec) -> int:
    """Stable per-dictionary offset for seeds."""
    return spec.layer + (100 if spec.kind == "transcoder" else 0)


def cache_activations(model: GPT2, train_ids: np.ndarray, specs: list[DictionarySpec], chunk: int = 64):
    """`{(site, layer): float32 [tokens, d]}` over non-overlapping `n_positions` windows of the
    training stream (all positions, no BOS: the same kind of windows the engine samples)."""
    n_ctx = model.config.n_positions
    windows = train_ids[: len(train_ids) // n_ctx * n_ctx].reshape(-1, n_ctx)
    wanted = sorted({(s.site_in, s.layer) for s in specs} | {(s.site_out, s.layer) for s in specs})
    out = {key: np.empty((windows.size, model.config.d_model), np.float32) for key in wanted}

    @eqx.filter_jit
    def points(model, w):
        return jax.vmap(lambda t: model.residuals(t)[1])(w)

    for i in range(0, len(windows), chunk):
        got = points(model, jnp.asarray(windows[i : i + chunk]))
        rows = slice(i * n_ctx, (i + got["resid_post"].shape[0]) * n_ctx)
        for site, layer in wanted:
            out[(site, layer)][rows] = np.asarray(got[site][:, layer]).reshape(-1, model.config.d_model)
    return out


class Dictionary(eqx.Module):
    W_enc: jax.Array  # [d_in, d_sae]
    b_enc: jax.Array  # [d_sae]
    W_dec: jax.Array  # [d_sae, d_out]
    b_dec: jax.Array  # [d_out]


def _topk(pre, k):
    vals, idx = jax.lax.top_k(pre, k)
    return jax.nn.relu(vals), idx


def _decode_sparse(vals, idx, W_dec):
    return jnp.einsum("bk,bkd->bd", vals, W_dec[idx])


def _sae_loss(params: Dictionary, x, dead, spec: DictionarySpec, variance):
    pre = (x - params.b_dec) @ params.W_enc + params.b_enc
    vals, idx = _topk(pre, spec.k)
    recon = _decode_sparse(vals, idx, params.W_dec) + params.b_dec
    err = x - recon
    mse = jnp.square(err).sum(-1).mean() / variance

    # AuxK: the top aux_k dead latents reconstruct the (fixed) error; skipped while none is dead.
    def aux_loss(_):
        aux_vals, aux_idx = _topk(jnp.where(dead, pre, -jnp.inf), spec.aux_k)
        aux_recon = _decode_sparse(aux_vals, aux_idx, params.W_dec)
        return jnp.square(jax.lax.stop_gradient(err) - aux_recon).sum(-1).mean() / variance

    aux = jax.lax.cond(dead.any(), aux_loss, lambda _: jnp.zeros((), mse.dtype), None)
    fired = jnp.zeros(pre.shape[-1], jnp.int32).at[idx.reshape(-1)].add((vals > 0).reshape(-1).astype(jnp.int32))
    l0 = (vals > 0).sum(-1).mean()
    return mse + spec.aux_coef * aux, {"nmse": mse, "aux": aux, "l0": l0, "fired": fired}


def _transcoder_loss(params: Dictionary, x, y, l1, spec: DictionarySpec, variance):
    acts = jax.nn.relu(x @ params.W_enc + params.b_enc)
    recon = acts @ params.W_dec + params.b_dec
    mse = jnp.square(y - recon).sum(-1).mean() / variance
    sparsity = (acts * jnp.linalg.norm(params.W_dec, axis=-1)).sum(-1).mean()
    l0 = (acts > 0).sum(-1).mean()
    fired = (acts > 0).sum(0).astype(jnp.int32)
    return mse + l1 * sparsity, {"nmse": mse, "sparsity": sparsity, "l0": l0, "fired": fired}


def _scale(x: np.ndarray) -> float:
    """c such that E||x / c||^2 = d."""
    return float(np.sqrt(np.mean(np.sum(np.square(x, dtype=np.float64), -1)) / x.shape[1]))


def train_and_save(spec: DictionarySpec, acts: dict, folder: Path, seed: int, log=print) -> dict:
    t0 = time.time()
    x_raw, y_raw = acts[(spec.site_in, spec.layer)], acts[(spec.site_out, spec.layer)]
    c_in, c_out = _scale(x_raw), _scale(y_raw)
    n, d_in = x_raw.shape
    d_out = y_raw.shape[1]
    y_mean = (y_raw.mean(0, dtype=np.float64) / c_out).astype(np.float32)
    variance = float(np.mean(np.sum(np.square(y_raw / c_out - y_mean, dtype=np.float64), -1)))

    k_dec, k_enc = jax.random.split(jax.random.key(seed))
    W_dec = jax.random.normal(k_dec, (spec.d_sae, d_out))
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    if spec.kind == "sae":
        W_enc = W_dec.T
    else:
        W_dec = 0.1 * W_dec
        W_enc = jax.random.uniform(k_enc, (d_in, spec.d_sae), minval=-1.0, maxval=1.0) / np.sqrt(d_in)
    params = Dictionary(W_enc=W_enc, b_enc=jnp.zeros(spec.d_sae), W_dec=W_dec, b_dec=jnp.asarray(y_mean))

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, spec.lr, spec.warmup_steps, spec.steps, spec.lr * spec.final_lr_fraction
    )
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)

    @eqx.filter_jit(donate="all-except-first")
    def sae_step(x, params, opt_state, dead):
        (_, aux), grads = jax.value_and_grad(_sae_loss, has_aux=True)(params, x, dead, spec, variance)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        W_dec = params.W_dec / jnp.linalg.norm(params.W_dec, axis=-1, keepdims=True)
        return dataclasses.replace(params, W_dec=W_dec), opt_state, aux

    @eqx.filter_jit(donate="all-except-first")
    def transcoder_step(xy, params, opt_state, l1):
        x, y = xy
        (_, aux), grads = jax.value_and_grad(_transcoder_loss, has_aux=True)(params, x, y, l1, spec, variance)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux

    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cursor, since_fired = 0, np.zeros(spec.d_sae, np.int64)
    l1 = spec.l1_init
    history, running = [], []
    for step in range(1, spec.steps + 1):
        if cursor + spec.batch_size > n:
            order, cursor = rng.permutation(n), 0
        rows = np.sort(order[cursor : cursor + spec.batch_size])
        cursor += spec.batch_size
        x = jnp.asarray(x_raw[rows] / c_in)
        if spec.kind == "sae":
            dead = jnp.asarray(since_fired >= spec.dead_after_tokens)
            params, opt_state, aux = sae_step(x, params, opt_state, dead)
        else:
            y = jnp.asarray(y_raw[rows] / c_out)
            params, opt_state, aux = transcoder_step((x, y), params, opt_state, jnp.float32(l1))
            l0 = float(aux["l0"])
            l1 *= float(np.exp(spec.l1_rate * np.clip((l0 - spec.target_l0) / spec.target_l0, -1.0, 1.0)))
        fired = np.asarray(aux["fired"])
        since_fired = np.where(fired > 0, 0, since_fired + spec.batch_size)
        running.append({k: float(v) for k, v in aux.items() if k != "fired"})
        if step % 100 == 0 or step == spec.steps:
            record = {k: float(np.mean([r[k] for r in running])) for k in running[0]}
            record.update(
                step=step,
                dead_fraction=float(np.mean(since_fired >= spec.dead_after_tokens)),
                seconds=round(time.time() - t0, 1),
            )
            if spec.kind == "transcoder":
                record["l1_coefficient"] = l1
            running = []
            history.append(record)
            log(f"{spec.name} step {step}: {record}")

    W_enc = np.asarray(params.W_enc) / c_in
    W_dec = np.asarray(params.W_dec) * c_out
    b_dec = np.asarray(params.b_dec) * c_out
    weights = {"W_enc": W_enc, "b_enc": np.asarray(params.b_enc), "W_dec": W_dec, "b_dec": b_dec}
    save_saelens(folder, saelens_cfg(spec, d_in, d_out), weights)
    return {
        "spec": dataclasses.asdict(spec),
        "seed": seed,
        "training_tokens": n,
        "input_scale": c_in,
        "output_scale": c_out,
        "final_l1_coefficient": l1 if spec.kind == "transcoder" else None,
        "history": history,
        "seconds": round(time.time() - t0, 1),
    }


def saelens_cfg(spec: DictionarySpec, d_in: int, d_out: int) -> dict:
    """cfg.json as sae_lens 6.x writes it (`SAEConfig.to_dict()`). The version keys in
    `metadata` matter: without them sae_lens reads the file as a pre-6.0 config and drops
    the metadata (hook names)."""
    metadata = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "model_name": "qlens-default-gpt2",
        "hook_name": spec.hook_name,
        "hook_head_index": None,
        "prepend_bos": False,
        "context_size": 128,
        "dataset_path": "janeaustenr (Debian r-cran-janeaustenr), training split",
        "model_class_name": "HookedTransformer",
    }
    cfg = {"d_in": d_in, "d_sae": spec.d_sae, "dtype": "float32", "device": "cpu"}
    cfg["apply_b_dec_to_input"] = spec.kind == "sae"  # sae_lens refuses it for transcoders
    cfg.update(normalize_activations="none", reshape_activations="none", metadata=metadata)
    if spec.kind == "sae":
        cfg.update(k=spec.k, rescale_acts_by_decoder_norm=False, architecture="topk")
    else:
        metadata["hook_name_out"] = spec.hook_name_out
        cfg.update(d_out=d_out, architecture="transcoder")
    return cfg
