"""The paper's other baselines: zero-out, token change and tuned lens (docs/definitions.md section 1).

`baseline_signatures` returns `Signatures` in the kernel's format; `splice` holds the
dictionary-in-the-forward-pass machinery that the secant lenses and the output score share;
tuned-lens translators are trained with `train_tuned_lens` and saved with Orbax
(`save_tuned_lens` / `load_tuned_lens`) or read from the tuned-lens library's files
(`load_tuned_lens_library`).
"""

from qlens_jax.baselines.api import BASELINE_LENSES, TUNED_LENSES, baseline_signatures
from qlens_jax.baselines.secant import is_secant, secant_spec
from qlens_jax.baselines.tuned_lens import TunedLens, all_points, lens_kl, library_points, point_name
from qlens_jax.baselines.tuned_lens_io import (
    load_tuned_lens,
    load_tuned_lens_library,
    save_tuned_lens,
    save_tuned_lens_library,
)
from qlens_jax.baselines.tuned_lens_train import TrainingRecord, TunedLensTraining, heldout_kl, train_tuned_lens

__all__ = [
    "BASELINE_LENSES",
    "TUNED_LENSES",
    "TrainingRecord",
    "TunedLens",
    "TunedLensTraining",
    "all_points",
    "baseline_signatures",
    "heldout_kl",
    "is_secant",
    "lens_kl",
    "library_points",
    "load_tuned_lens",
    "load_tuned_lens_library",
    "point_name",
    "save_tuned_lens",
    "save_tuned_lens_library",
    "secant_spec",
    "train_tuned_lens",
]
