"""Reading tensors from Hugging Face checkpoint files, lazily, with errors that name the file.

Supports a single `model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
and `pytorch_model.bin` (needs PyTorch: `pip install 'qlens-jax[torch]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from converters.errors import ConversionError


class TensorSource:
    """A name -> numpy array mapping over one checkpoint, read one tensor at a time."""

    def keys(self) -> list[str]:
        raise NotImplementedError

    def get(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SafetensorsSource(TensorSource):
    def __init__(self, files: list[Path], key_to_file: dict[str, Path] | None = None):
        from safetensors import safe_open

        self._handles = {}
        self._where: dict[str, Path] = {}
        for path in files:
            if not path.exists():
                raise ConversionError(f"missing weight file {path}")
            try:
                handle = safe_open(str(path), framework="flax")
            except Exception as err:  # safetensors raises its own error types
                raise ConversionError(f"cannot read {path}: corrupt or truncated safetensors file ({err})") from err
            self._handles[path] = handle
            for key in handle.keys():
                self._where[key] = path
        if key_to_file is not None:
            missing = sorted({str(f) for k, f in key_to_file.items() if k not in self._where})
            if missing:
                raise ConversionError(f"the safetensors index lists keys that its shards do not hold: {missing[:5]}")

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> np.ndarray:
        path = self._where[key]
        try:
            array = self._handles[path].get_tensor(key)
        except Exception as err:
            raise ConversionError(f"cannot read tensor {key!r} from {path}: {err}") from err
        return np.asarray(array)  # bfloat16 arrives as an ml_dtypes array


class StateDictSource(TensorSource):
    """Tensors from a PyTorch state dict (in memory, or loaded from `pytorch_model.bin`)."""

    def __init__(self, state_dict: dict):
        self._state = state_dict

    def keys(self) -> list[str]:
        return list(self._state)

    def get(self, key: str) -> np.ndarray:
        tensor = self._state[key].detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            import ml_dtypes

            return tensor.float().numpy().astype(ml_dtypes.bfloat16)
        return tensor.numpy()


def open_checkpoint(directory: Path) -> TensorSource:
    """The weights of a Hugging Face checkpoint directory."""
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ConversionError(f"cannot read {index}: {err}") from err
        files = sorted({directory / f for f in weight_map.values()})
        return SafetensorsSource(files, {k: directory / f for k, f in weight_map.items()})
    if single.exists():
        return SafetensorsSource([single])
    bin_file = directory / "pytorch_model.bin"
    if bin_file.exists():
        try:
            import torch
        except ImportError as err:
            raise ConversionError(
                f"{bin_file} is a PyTorch pickle; install the PyTorch extra "
                "(pip install 'qlens-jax[torch]') or save the model as safetensors"
            ) from err
        try:
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConversionError(f"cannot read {bin_file}: corrupt or truncated ({err})") from err
        return StateDictSource(state)
    raise ConversionError(
        f"no weights in {directory}: expected model.safetensors, model.safetensors.index.json "
        "with its shards, or pytorch_model.bin"
    )
