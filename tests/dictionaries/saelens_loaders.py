"""sae_lens's own Hub loaders (`gemma_2`, `gemma_3`, `llama_scope`) run on local files: the
independent reading of the published formats that the converters are compared with."""

import warnings
from pathlib import Path

from safetensors import safe_open


def _shapes(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path), framework="numpy") as f:
        return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}


def sae_lens_from_repo(
    sae_lens,
    monkeypatch,
    loader: str,
    root: Path,
    repo_id: str,
    folder: str,
    cfg_overrides: dict | None = None,
    norm_scaling_factor: float | None = None,
):
    """`SAE.from_pretrained(repo_id, folder)` through sae_lens's loader `loader`, with the Hub
    replaced by the local repository copy `root`; `cfg_overrides` stand in for facts a loader
    reads from its model table (sizes of the real Gemma 2 models), and `norm_scaling_factor`
    for the release registry's factor, folded as `from_pretrained` folds it."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    def download(repo_id, filename, subfolder=None, **_):
        return str(root / subfolder / filename if subfolder else root / filename)

    monkeypatch.setattr(loaders, "hf_hub_download", download)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", lambda repo, name: _shapes(root / name))

    def converter(**kwargs):
        kwargs["cfg_overrides"] = {**(kwargs.get("cfg_overrides") or {}), **(cfg_overrides or {})}
        return getattr(loaders, loader)(**kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = sae_lens.SAE.from_pretrained(repo_id, folder, device="cpu", converter=converter)
    if norm_scaling_factor is not None:
        sae.fold_activation_norm_scaling_factor(norm_scaling_factor)
    sae.eval()
    return sae
