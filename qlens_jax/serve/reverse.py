"""Reverse lookup (docs/definitions.md section 8): which features of a run promote a token, or respond to it.

For token `t` and every feature `i` of a dictionary, the exact Query Lens score of `t`:

- value side: `s_i(t) = W_U[:, t]^T LN_final(M_p v_i)` (plus soft-capping where the model has
  it), the final norm applied per feature exactly, factored through its per-feature statistics
  (`value_factors`): those are computed once per dictionary and operator (the transport of every
  feature, `n_features x d_model^2`), kept in memory and in the row cache (`norm_cache`), and
  every lookup then costs `n_features x d_model`;
- key side: `s_i(t) = <(e_t - c) / ||e_t - c||, K_p k_i>`, the row of the forward readout's
  centered embeddings (`centered_embeddings`, the run's sample) against the transported key;
  being linear, it is computed as `<r_t K_p, k_i>` (`n x d_model` per lookup).

The operators `M_p` / `K_p` are the run's own (`DIR/operators`), loaded once; the dictionary
rows are memory-mapped (`rows`) and scored in chunks, never a `n_features x vocab` matrix.
For a dictionary on a module output they are its site's (docs/definitions.md section 1b): `attn_out` /
`mlp_out` value vectors use the residual point they are added into; at `z` both operators are
`[d_model, n_heads x head_dim]` (the value one includes `W_O` and any post-norm).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from qlens_jax.readout import centered_embeddings, check_finite_scores, dot_scores
from qlens_jax.readout.scores import transported
from qlens_jax.serve.errors import QueryError, UnavailableError
from qlens_jax.serve.norm_cache import load_statistics, save_statistics, statistics_path
from qlens_jax.serve.rows import DictionaryRows, RowFile, open_rows
from qlens_jax.serve.rundata import DictionaryEntry, RunData
from qlens_jax.serve.value_factors import factored_value_scores, norm_statistics, value_factors
from qlens_jax.tokens import token_id_of

SIDES = {"value": "promotes", "key": "activated-by"}
OPTIONS = {"value": "--promotes", "key": "--activated-by"}  # what names the token in an error, on the command line
CHUNK = 8192
MAX_TOP = 10_000


@dataclass(frozen=True)
class ReverseHit:
    """One ranked feature: its dictionary, layer, feature id and the token's exact score."""

    rank: int
    dictionary: str
    dictionary_index: int
    layer: int
    feature: int
    score: float

    def as_dict(self) -> dict:
        return dict(
            rank=self.rank,
            dictionary=self.dictionary,
            dictionary_index=self.dictionary_index,
            layer=self.layer,
            feature=self.feature,
            score=self.score,
        )


@eqx.filter_jit
def _statistics_chunk(model, op: Float[Array, "d w"], rows: Float[Array, "n w"]) -> Float[Array, "n 2"]:
    return norm_statistics(
        model.final_norm, transported(op, rows).astype(model.embed_tokens.dtype)
    )  # cast as value_scores does


@eqx.filter_jit
def _key_chunk(pulled_row: Float[Array, "1 w"], rows: Float[Array, "n w"]) -> Float[Array, " n"]:
    return dot_scores(pulled_row, rows)[:, 0]


def pulled_readout_row(readout_row: Float[Array, "1 d"], op: Float[Array, "d w"]) -> Float[Array, "1 w"]:
    """The key readout row pulled back through the operator: `<r, K k> = <r K, k>`. The key
    readout is linear in the transported vector (no norm), so one `d x w` product replaces the
    transport of every feature (`n x d x w`; `w` is the width of the dictionary's site)."""
    return jnp.matmul(readout_row, op.astype(jnp.float32))


class ReverseLookup:
    """A run's model, tokenizer, sample and operators, loaded once and checked against run.json;
    `lookup` ranks every feature of the run's dictionaries by one token's exact score."""

    def __init__(self, run: RunData | str | Path, chunk: int = CHUNK):
        import converters
        from qlens_jax.corpus import CorpusError, load_token_sample
        from qlens_jax.io.hashing import model_hash, text_hash
        from qlens_jax.job.inputs import vocab_strings
        from qlens_jax.lens import load_operators
        from qlens_jax.numerics import cast_model

        run = run if isinstance(run, RunData) else RunData(run)
        self.run, self.chunk = run, chunk
        inputs, options = run.manifest["inputs"], run.manifest["options"]
        self.model_path = inputs["model"]["path"]
        try:
            model = converters.load_model(self.model_path)
            tokenizer = converters.load_tokenizer(options.get("tokenizer") or self.model_path)
        except Exception as err:  # noqa: BLE001 (any failure to read the run's model is the same bad input)
            raise UnavailableError(f"{run.path}: cannot load the run's model {self.model_path} ({err})") from None
        if model_hash(model) != inputs["model"]["sha256"]:
            raise UnavailableError(f"{run.path}: the model at {self.model_path} differs from the one the run used")
        if text_hash(tokenizer.to_str()) != inputs["tokenizer"]["sha256"]:
            raise UnavailableError(f"{run.path}: the tokenizer of {self.model_path} differs from the one the run used")
        self.model = (
            cast_model(model, options.get("dtype", "float32"))
            if options.get("dtype", "float32") != "float32"
            else model
        )
        self.tokenizer = tokenizer
        self.vocab = vocab_strings(tokenizer, model.config.vocab_size)
        self.remove_final_norm_bias = bool(options.get("remove_final_norm_bias", False))
        self.exact_norm_jacobian = bool(options.get("exact_norm_jacobian", False))
        operators = run.path / "operators"
        if not (operators / "operators.json").is_file():
            raise UnavailableError(
                f"{run.path}: the run saved no transport operators (it ran on the per-feature path); "
                "rerun it with --path dense to look tokens up in reverse"
            )
        try:
            self.operators = load_operators(operators)
        except Exception as err:  # noqa: BLE001 (Orbax / TensorStore raise many types; each means the same)
            unmerged = not (operators / "arrays" / "manifest.ocdbt").exists() and any(
                (operators / "arrays").glob("ocdbt.process_*")
            )
            hint = (
                (
                    "; they were saved unmerged, as qlens did under a folder whose path holds [ * or ? before issue 26: "
                    "rerun the run into a new folder"
                )
                if unmerged
                else ""
            )
            raise UnavailableError(
                f"{operators}: cannot read the run's saved operators ({' '.join(str(err).split())[:200]}){hint}"
            ) from None
        sample = run.path / "sample.npy"
        if not sample.is_file():  # a FIFO would block the read
            raise UnavailableError(f"{sample}: missing or not a regular file")
        try:
            self.tokens, self.mask = load_token_sample(sample, model.config.vocab_size)
        except CorpusError as err:
            raise UnavailableError(f"{run.path}: {err}") from None
        self._key_matrix = None
        self._statistics: dict[int, np.ndarray] = {}  # by dictionary index (the operators are fixed)
        self._rows: dict[int, DictionaryRows] = {}
        self._lock = threading.Lock()

    # ---- tokens -------------------------------------------------------------------------------
    def token_id(self, text: str | int, option: str = "token") -> int:
        """The id `text` names: `id:N`, an int id, or text the tokenizer makes exactly one token
        of (`qlens_jax.tokens.token_id_of`; `TokenSpecError` otherwise)."""
        return token_id_of(text, self.tokenizer, self.vocab, option)

    # ---- scores -------------------------------------------------------------------------------
    def rows(self, entry: DictionaryEntry) -> DictionaryRows:
        if entry.index not in self._rows:
            self._rows[entry.index] = open_rows(entry, self.model_path)
        return self._rows[entry.index]

    def operator(self, entry: DictionaryEntry, side: str) -> Float[Array, "d w"]:
        """The run's operator that transports `entry`'s vectors on `side`, applied as `X @ op.T`
        (`UnavailableError` if it has none): `[d_model, d_model]` at a residual point; at a module
        output `[d_model, width]` (`TransportOperators.operator`): a `z` dictionary's value
        vectors pass `W_O` and what follows, its keys pull back to the heads' outputs
        (`n_heads x head_dim` wide); `attn_out` / `mlp_out` value vectors use the rows of the
        residual point they are added into."""
        from qlens_jax.lens.points import MODULE_OUTPUT_SITES, dictionary_points, row

        meta = self.rows(entry).meta
        n_layers = self.model.config.n_layers
        points = dictionary_points(
            meta["site_in"],
            meta["site_out"],
            entry.layer,
            n_layers,
            self.exact_norm_jacobian,
            meta["input_norm"],
            parallel=self.model.config.parallel_residual,
        )
        point = points.write if side == "value" else points.read
        stored = self.operators.value if side == "value" else self.operators.key
        residual = point.site not in MODULE_OUTPUT_SITES
        if (
            stored is None
            or not self.operators.covers(side, point, n_layers)
            or (residual and row(point, n_layers) >= stored.shape[0])
        ):
            lens = f"query_lens_{side}"
            raise UnavailableError(
                f"{self.run.path}: the run's operators hold no {side} rows for {entry.name} (layer {entry.layer}); "
                f"the reverse lookup on the {side} side needs a run with the {lens} lens"
            )
        return self.operators.operator(side, point, n_layers, self.model.config)

    def norm_statistics(self, entry: DictionaryEntry) -> np.ndarray:
        """`[d_sae, 2]` float32: the final norm's `(mu_i, rstd_i)` of every transported value vector
        `M_p v_i` of `entry` (`value_factors.norm_statistics`). Computed once (the transport of every
        feature), then kept in memory and in the row cache (`norm_cache`) for later processes."""
        if entry.index not in self._statistics:
            rows, path, op = self.rows(entry), self.statistics_path(entry), self.operator(entry, "value")
            stats = load_statistics(path, len(rows.value))
            if stats is None:
                stats = self._map_chunks(rows.value, lambda start, x: _statistics_chunk(self.model, op, x))
                try:
                    save_statistics(path, stats)
                except OSError:  # a read-only cache: this process keeps them in memory all the same
                    pass
            self._statistics[entry.index] = stats  # 8 bytes a feature
        return self._statistics[entry.index]

    def statistics_path(self, entry: DictionaryEntry) -> Path:
        """Where `norm_statistics(entry)` are kept: beside the dictionary's rows, named by the
        operator and the final norm (`norm_cache.statistics_path`)."""
        folder = self.rows(entry).value.path.parent
        return statistics_path(
            folder, np.asarray(self.operator(entry, "value")), self.model.final_norm, str(self.model.embed_tokens.dtype)
        )

    def scores(self, entry: DictionaryEntry, side: str, token: int) -> np.ndarray:
        """The token's exact score for every feature of `entry`: `[d_sae]` float32."""
        rows = self.rows(entry)
        op = self.operator(entry, side)
        if side == "value":
            stats = self.norm_statistics(entry)
            factors = value_factors(self.model, op, token, self.remove_final_norm_bias)
            return self._map_chunks(
                rows.value, lambda start, x: factored_value_scores(factors, self._padded(stats[start:]), x)
            )
        if self._key_matrix is None:
            self._key_matrix = centered_embeddings(self.model, jnp.asarray(self.tokens), jnp.asarray(self.mask))
        pulled = pulled_readout_row(self._key_matrix[token][None], op)
        return self._map_chunks(rows.key, lambda start, x: _key_chunk(pulled, x))

    def _padded(self, array: np.ndarray) -> np.ndarray:
        """The first `chunk` rows of `array`, zero-padded to `chunk` (one compiled shape for every chunk)."""
        block = array[: self.chunk]
        return (
            block
            if len(block) == self.chunk
            else np.concatenate([block, np.zeros((self.chunk - len(block), *block.shape[1:]), block.dtype)])
        )

    def _map_chunks(self, source: RowFile, score) -> np.ndarray:
        """`score(start, rows)` of the rows of `source`, chunk by chunk in order, concatenated."""
        n, out = len(source), []
        for start in range(0, n, self.chunk):
            block = self._padded(source.read(start, start + self.chunk))
            out.append(score(start, jnp.asarray(block)))  # dispatched asynchronously: the next read overlaps it
        return np.concatenate([np.asarray(o) for o in out])[:n]

    def lookup(
        self,
        token: str | int,
        side: str = "value",
        dictionary: str | None = None,
        top: int = 50,
        names: dict[str, str] | None = None,
    ) -> dict:
        """The `top` features with the highest score of `token` on `side`, over every dictionary
        of the run (or the one named), best first, with the time taken. `names`: what to call the
        token, top and dictionary in errors (`{"token": ..., "top": ..., "dictionary": ...}`;
        default: the command line's options)."""
        names = {"token": OPTIONS.get(side, "token"), "top": "--top", "dictionary": "--dictionary", **(names or {})}
        if side not in SIDES:
            raise QueryError(f"side {side!r}: choose 'value' (promotes) or 'key' (activated-by)")
        if not isinstance(top, int) or not 1 <= top <= MAX_TOP:
            raise QueryError(f"{names['top']} {top}: must be between 1 and {MAX_TOP}")
        entries = (
            [self.run.dictionary(dictionary, names["dictionary"])] if dictionary is not None else self.run.dictionaries
        )
        token_id = self.token_id(token, names["token"])
        start = time.perf_counter()
        candidates = []
        with self._lock:
            for entry in entries:
                scores = self.scores(entry, side, token_id)
                check_finite_scores(
                    {"score": scores},
                    np.arange(len(scores)),
                    lens=f"query_lens_{side}",
                    side=side,
                    dictionary=entry.name,
                    layer=entry.layer,
                )
                keep = min(top, len(scores))
                best = np.argpartition(-scores, keep - 1)[:keep]
                candidates.extend((float(scores[i]), entry, int(i)) for i in best)
        candidates.sort(key=lambda c: (-c[0], c[1].index, c[2]))
        hits = [ReverseHit(r + 1, e.name, e.index, e.layer, f, s) for r, (s, e, f) in enumerate(candidates[:top])]
        return {
            "token": self.vocab[token_id],
            "token_id": token_id,
            "side": side,
            "features_scored": sum(e.d_sae for e in entries),
            "seconds": round(time.perf_counter() - start, 3),
            "hits": [h.as_dict() for h in hits],
        }


def reverse_lookup(
    run_dir: str | Path, token: str | int, side: str = "value", dictionary: str | None = None, top: int = 50
) -> list[ReverseHit]:
    """Features of the run in `run_dir` ranked by the exact Query Lens score of `token`.

    `side="value"`: the features that promote the token most (QL-value score of the token);
    `side="key"`: the features the token activates most (QL-key centered cosine). `token` is a
    string that the run's tokenizer makes exactly one token of (else `InputError` showing the
    split), `id:N`, or an int id. `dictionary` limits the search to one dictionary of the run.
    Returns the best `top` as `ReverseHit(rank, dictionary, dictionary_index, layer, feature, score)`.
    """
    result = ReverseLookup(run_dir).lookup(token, side, dictionary, top)
    return [ReverseHit(**hit) for hit in result["hits"]]
