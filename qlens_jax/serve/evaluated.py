"""What `qlens serve --evaluation EVAL_DIR` shows beside each feature: the records of an
evaluated run's `evaluated_features.json` (`qlens_jax.evaluation.showcase`): activating contexts
with the maximal token, steered continuations at each KL target, every lens's scores.

The file is read once, checked entry by entry, and held in memory keyed by (dictionary, layer,
feature). Its strings are the model's tokens: the page shows them as text, never as markup.
"""

from __future__ import annotations

import json
from pathlib import Path

from qlens_jax.errors import InputError
from qlens_jax.evaluation.showcase import FILE_NAME

MAX_BYTES = 512 * 2**20  # a larger file is refused rather than read into the server's memory


class EvaluationFileError(InputError):
    """An evaluation folder or file that `qlens serve` cannot show."""


def _check_record(path: Path, i: int, record) -> tuple[str, int, int]:
    if not isinstance(record, dict):
        raise EvaluationFileError(f"{path}: features entry {i} is not an object")
    key = record.get("dictionary"), record.get("layer"), record.get("feature")
    if not isinstance(key[0], str) or not all(isinstance(x, int) and not isinstance(x, bool) for x in key[1:]):
        raise EvaluationFileError(f"{path}: features entry {i} lacks dictionary (text), layer and feature (integers)")
    for name in ("contexts", "steering", "lenses"):
        if not isinstance(record.get(name, []), list):
            raise EvaluationFileError(f"{path}: features entry {i}: {name} is not a list")
    return key


class EvaluatedFeatures:
    """The records of one `evaluated_features.json`, by (dictionary name, layer, feature)."""

    def __init__(self, source: str | Path):
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / FILE_NAME
        if not path.is_file():
            raise EvaluationFileError(
                f"--evaluation {source}: no {FILE_NAME} (give the output folder of `qlens evaluate`)"
            )
        if path.stat().st_size > MAX_BYTES:
            raise EvaluationFileError(f"{path}: larger than {MAX_BYTES >> 20} MiB")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise EvaluationFileError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(document, dict) or not isinstance(document.get("features"), list):
            raise EvaluationFileError(f"{path}: expected an object with a list of features")
        self.path = path
        self.model = document.get("model") if isinstance(document.get("model"), str) else None
        self.records = {_check_record(path, i, r): r for i, r in enumerate(document["features"])}

    def __len__(self) -> int:
        return len(self.records)

    def get(self, dictionary: str, layer: int, feature: int) -> dict | None:
        return self.records.get((dictionary, layer, feature))
