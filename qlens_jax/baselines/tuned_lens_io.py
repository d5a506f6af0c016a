"""Saving and loading tuned lenses: our Orbax checkpoints and the tuned-lens library's files.

Orbax (`save_tuned_lens` / `load_tuned_lens`): a folder with `tuned_lens.json` (format,
points, n_layers, d_model, optional training record) and `params/`, an Orbax
`StandardCheckpointer` checkpoint of `{"weight": [n, d, d], "bias": [n, d]}`.

The tuned-lens library (AlignmentResearch/tuned-lens, `TunedLens.save`): a folder with
`config.json` (`TunedLensConfig`: `d_model`, `num_hidden_layers`, `bias`, ...) and
`params.pt`, `torch.save` of `layer_translators.state_dict()`: keys `{i}.weight` `[d, d]`
(`nn.Linear`, `[out, in]`) and `{i}.bias` `[d]` for `i` in `0 .. num_hidden_layers-1`;
translator `i` acts on hidden state `i` (resid_pre[i]) as `h + W h + b`. Some copies carry
a `layer_translators.` prefix on the keys; both are read. A `params.safetensors` with the
same keys is read too (no torch needed). Every key must be consumed and every shape fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from qlens_jax.baselines.tuned_lens import TunedLens, library_points
from qlens_jax.errors import InputError
from qlens_jax.globs import unglobbed

FORMAT = "qlens-tuned-lens-v1"
_META, _PARAMS = "tuned_lens.json", "params"


def save_tuned_lens(lens: TunedLens, directory: str | Path, record: dict | None = None) -> Path:
    """Write `lens` (and an optional JSON-able training record) to a new folder."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with unglobbed(directory) as literal:  # Orbax globs below the folder
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(literal / _PARAMS, {"weight": lens.weight, "bias": lens.bias}, force=True)
        checkpointer.wait_until_finished()
    meta = {"format": FORMAT, "points": list(lens.points), "n_layers": lens.n_layers, "d_model": lens.d_model}
    if record is not None:
        meta["training"] = record
    (directory / _META).write_text(json.dumps(meta, indent=1))
    return directory


def load_tuned_lens(directory: str | Path, model=None) -> TunedLens:
    """A lens written by `save_tuned_lens`, or a tuned-lens library folder (detected by its files).

    With `model`, checks that the lens fits its width and depth.
    """
    directory = Path(directory).absolute()
    if not (directory / _META).is_file():
        if (directory / "config.json").is_file() or directory.suffix in (".pt", ".safetensors"):
            return load_tuned_lens_library(directory, model)
        raise InputError(
            f"tuned lens {directory}: neither a qlens tuned lens ({_META}) nor a tuned-lens library folder (config.json + params.pt)"
        )
    import orbax.checkpoint as ocp

    meta = json.loads((directory / _META).read_text())
    if meta.get("format") != FORMAT:
        raise InputError(f"tuned lens {directory}: format {meta.get('format')!r}, expected {FORMAT!r}")
    n, d = len(meta["points"]), int(meta["d_model"])
    target = {"weight": jnp.zeros((n, d, d), jnp.float32), "bias": jnp.zeros((n, d), jnp.float32)}
    with unglobbed(directory) as literal:
        params = ocp.StandardCheckpointer().restore(literal / _PARAMS, target)
    lens = TunedLens(params["weight"], params["bias"], tuple(meta["points"]), int(meta["n_layers"]))
    _check_model(lens, model, directory)
    return lens


def _check_model(lens: TunedLens, model, where) -> None:
    if model is None:
        return
    c = model.config
    if (lens.n_layers, lens.d_model) != (c.n_layers, c.d_model):
        raise InputError(
            f"tuned lens {where}: made for {lens.n_layers} layers of width {lens.d_model}, "
            f"but the model has {c.n_layers} layers of width {c.d_model}"
        )


def _read_state(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    try:
        import torch
    except ImportError:
        raise InputError(
            f"tuned lens {path}: reading params.pt needs torch (pip install torch), or convert it to params.safetensors"
        ) from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {key: value.detach().to(torch.float32).numpy() for key, value in state.items()}


def load_tuned_lens_library(path: str | Path, model=None) -> TunedLens:
    """A lens in the tuned-lens library's layout: a folder (`config.json` + `params.pt` or
    `params.safetensors`) or a params file alone (then the layer count comes from the keys)."""
    path = Path(path).absolute()
    folder = path if path.is_dir() else path.parent
    params = (
        path
        if path.is_file()
        else next((folder / n for n in ("params.safetensors", "params.pt") if (folder / n).is_file()), None)
    )
    if params is None:
        raise InputError(f"tuned lens {path}: no params.pt or params.safetensors")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    state = {key.removeprefix("layer_translators."): value for key, value in _read_state(params).items()}
    n_layers = int(
        config.get(
            "num_hidden_layers", 1 + max((int(k.split(".")[0]) for k in state if k.split(".")[0].isdigit()), default=-1)
        )
    )
    d = int(config.get("d_model", next(iter(state.values())).shape[-1] if state else 0))
    if model is not None and (n_layers, d) != (model.config.n_layers, model.config.d_model):
        raise InputError(
            f"tuned lens {path}: config says {n_layers} layers of width {d}, but the model has "
            f"{model.config.n_layers} layers of width {model.config.d_model}"
        )
    weights, biases = [], []
    for i in range(n_layers):
        w = state.pop(f"{i}.weight", None)
        if w is None or tuple(w.shape) != (d, d):
            raise InputError(
                f"tuned lens {params}: translator {i} weight missing or not [{d}, {d}] (got {None if w is None else w.shape})"
            )
        b = state.pop(f"{i}.bias", None)
        if b is None and config.get("bias", True):
            raise InputError(f"tuned lens {params}: translator {i} has no bias but config.json says bias=true")
        if b is not None and tuple(b.shape) != (d,):
            raise InputError(f"tuned lens {params}: translator {i} bias has shape {b.shape}, expected [{d}]")
        weights.append(np.asarray(w, np.float32))
        biases.append(np.zeros(d, np.float32) if b is None else np.asarray(b, np.float32))
    if state:
        raise InputError(f"tuned lens {params}: keys not understood: {sorted(state)[:5]}")
    lens = TunedLens(jnp.asarray(np.stack(weights)), jnp.asarray(np.stack(biases)), library_points(n_layers), n_layers)
    return lens


def save_tuned_lens_library(
    lens: TunedLens, directory: str | Path, base_model: str = "", file: str = "params.pt"
) -> Path:
    """Write a lens with the library's translators (`library_points`) in the library's layout."""
    if lens.points != library_points(lens.n_layers):
        raise ValueError(
            f"the tuned-lens library has translators at resid_pre[0..L-1] only; this lens has points {lens.points}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for i in range(lens.n_layers):
        state[f"{i}.weight"] = np.asarray(lens.weight[i], np.float32)
        state[f"{i}.bias"] = np.asarray(lens.bias[i], np.float32)
    if file.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(state, str(directory / file))
    else:
        import torch

        torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, directory / file)
    config = {
        "base_model_name_or_path": base_model,
        "d_model": lens.d_model,
        "num_hidden_layers": lens.n_layers,
        "bias": True,
        "base_model_revision": None,
        "unembed_hash": None,
        "lens_type": "linear_tuned_lens",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory
