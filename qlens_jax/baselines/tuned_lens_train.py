"""Training tuned-lens translators with optax, and measuring them on held-out text.

The recipe (`TunedLensTraining`): identity (zero) initialization; minibatches of token windows
drawn with replacement from the training windows (seeded); loss = the mean over translators
of `KL(p_final || p_lens)` over valid positions; every translator is trained at once (they
are independent, so the summed loss trains each on its own KL). The default is the tuned-lens
library's recipe: SGD with Nesterov momentum 0.9 at learning rate 1.0, linear decay to 0,
weight decay 1e-3 (towards the identity, given the residual parametrization), 250 steps (the
library uses 2^18 tokens a step; `batch_sequences` sets ours). `optimizer="adam"` (AdamW,
warmup then cosine decay, use `learning_rate=1e-3`) is the alternative; on the bundled default
model both cut the held-out KL by 3-8x in 150 steps (docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qlens_jax.baselines.tuned_lens import TunedLens, lens_kl, library_points
from qlens_jax.lens.chunks import iter_token_chunks
from qlens_jax.models import Transformer
from qlens_jax.progress import progress

OPTIMIZERS = ("adam", "sgd_nesterov")


@dataclass(frozen=True)
class TunedLensTraining:
    """Training options (see the module docstring)."""

    steps: int = 250
    batch_sequences: int = 16
    optimizer: str = "sgd_nesterov"
    learning_rate: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    warmup_steps: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.steps < 1 or self.batch_sequences < 1:
            raise ValueError("steps and batch_sequences must be at least 1")


@dataclass
class TrainingRecord:
    """What a training run did: options, loss per step, held-out KL before/after."""

    options: dict
    points: tuple[int, ...]
    train_loss: list[float] = field(default_factory=list)
    heldout_kl_identity: list[float] | None = None
    heldout_kl_trained: list[float] | None = None


def _optimizer(options: TunedLensTraining) -> optax.GradientTransformation:
    if options.optimizer == "sgd_nesterov":
        schedule = optax.linear_schedule(options.learning_rate, 0.0, options.steps)
        return optax.chain(
            optax.add_decayed_weights(options.weight_decay),
            optax.sgd(schedule, momentum=options.momentum, nesterov=True),
        )
    warmup = min(options.warmup_steps, max(options.steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, options.learning_rate, max(warmup, 1), options.steps, 0.1 * options.learning_rate
    )
    return optax.adamw(schedule, weight_decay=options.weight_decay)


def _loss(params, static, model, tokens, mask):
    lens = eqx.combine(params, static)
    return lens_kl(model, lens, tokens, mask).mean()


@eqx.filter_jit
def _step(params, static, opt_state, model, tokens, mask, optimizer):
    loss, grads = jax.value_and_grad(_loss)(params, static, model, tokens, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def train_tuned_lens(
    model: Transformer,
    tokens: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    points: tuple[int, ...] | None = None,
    options: TunedLensTraining = TunedLensTraining(),
    heldout: tuple[np.ndarray, np.ndarray | None] | None = None,
    init: TunedLens | None = None,
    quiet: bool = True,
) -> tuple[TunedLens, TrainingRecord]:
    """Train translators at `points` (default: the library's, resid_pre[0..L-1]) on windows
    `tokens [n, seq]` (right-padding `mask`). With `heldout = (tokens, mask)` the record has the
    per-translator held-out KL of the identity (logit lens) and of the trained lens.
    """
    tokens = np.asarray(tokens, np.int32)
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
    c = model.config
    lens = init if init is not None else TunedLens.identity(c.n_layers, c.d_model, points or library_points(c.n_layers))
    params, static = eqx.partition(lens, eqx.is_inexact_array)
    optimizer = _optimizer(options)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(options.seed)
    record = TrainingRecord(options=asdict(options), points=lens.points)
    for _ in progress(range(options.steps), desc="tuned lens", quiet=quiet):
        rows = rng.integers(0, tokens.shape[0], size=options.batch_sequences)
        params, opt_state, loss = _step(
            params, static, opt_state, model, jnp.asarray(tokens[rows]), jnp.asarray(mask[rows]), optimizer
        )
        record.train_loss.append(float(loss))
    trained = eqx.combine(params, static)
    if heldout is not None:
        record.heldout_kl_identity = heldout_kl(
            model, TunedLens.identity(c.n_layers, c.d_model, lens.points), *heldout
        ).tolist()
        record.heldout_kl_trained = heldout_kl(model, trained, *heldout).tolist()
    return trained, record


_lens_kl = eqx.filter_jit(lens_kl)


def heldout_kl(
    model: Transformer,
    lens: TunedLens,
    tokens: np.ndarray,
    mask: np.ndarray | None = None,
    sequences_per_chunk: int = 16,
) -> np.ndarray:
    """Per translator, `KL(p_final || p_lens)` averaged over all valid positions of `tokens`."""
    tokens = np.asarray(tokens, np.int32)
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
    total, count = 0.0, 0.0
    for chunk_tokens, chunk_mask in iter_token_chunks(tokens, mask, sequences_per_chunk):
        n = float(chunk_mask.sum())
        if n == 0:
            continue
        total = total + n * np.asarray(
            _lens_kl(model, lens, jnp.asarray(chunk_tokens), jnp.asarray(chunk_mask)), np.float64
        )
        count += n
    return total / count
