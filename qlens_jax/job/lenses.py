"""Which lens a run computes for which dictionary, and the kernel plans that compute them.

Every lens is defined for every dictionary except a key vector read in place (Logit Lens's key
side, `key:identity:*`) for a `z` dictionary: its key vectors live in the heads' output space (`n_heads x head_dim` wide), not in the
residual stream that `W_E` embeds into (docs/definitions.md section 1b). A run mixing dictionaries
computes each lens for every dictionary it is defined for and skips the rest with a one-line
note (also kept in run.json); a lens defined for none of the run's dictionaries is refused at
start, naming the lens and the dictionaries.

The kernel plans one request for one set of dictionaries and lenses, and refuses a lens that
one of them lacks; so the run has one plan for the lenses defined for all its dictionaries,
and one more per lens defined for only some of them (over those).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from qlens_jax.errors import InputError
from qlens_jax.lens.lens_spec import parse_lens

WHY_NOT_AT_Z = "its key vectors live in the heads' output space (z), not the residual stream W_E embeds into"


def undefined_reason(lens: str, dictionary) -> str | None:
    """Why `lens` has no definition for `dictionary` (by the site it reads), or None: a key
    vector read in place (the identity transition) at `z`."""
    spec = parse_lens(lens)
    if dictionary.site_in == "z" and spec.side == "key" and not spec.transports:
        return WHY_NOT_AT_Z
    return None


@dataclass(frozen=True)
class Skipped:
    """A lens not computed for one dictionary of the run, and why."""

    lens: str
    dictionary_index: int
    dictionary: str
    layer: int
    reason: str

    def note(self) -> str:
        return (
            f"qlens: note: {self.lens} is not defined for {self.dictionary} (layer {self.layer}): {self.reason}; "
            "skipped for it"
        )

    def record(self) -> dict:
        return {
            "lens": self.lens,
            "dictionary_index": self.dictionary_index,
            "dictionary": self.dictionary,
            "layer": self.layer,
            "reason": self.reason,
        }


def skipped_lenses(lenses: tuple[str, ...], dictionaries: list) -> list[Skipped]:
    """The (lens, dictionary) pairs of a run that are not computed; `InputError` when a lens is
    computed for none of the dictionaries (nothing to compute: drop it from --lenses)."""
    skipped = [
        Skipped(lens, i, d.name, d.layer, reason)
        for lens in lenses
        for i, d in enumerate(dictionaries)
        if (reason := undefined_reason(lens, d)) is not None
    ]
    for lens in lenses:
        missing = [s for s in skipped if s.lens == lens]
        if len(missing) == len(dictionaries):
            names = ", ".join(f"{s.dictionary} (layer {s.layer})" for s in missing)
            raise InputError(
                f"--lenses: {lens} is not defined for any dictionary of this run ({names}): {missing[0].reason}; "
                f"drop {lens} from --lenses"
            )
    return skipped


@dataclass(frozen=True)
class RunPlans:
    """The kernel plans of a run: `full` (the lenses every dictionary has; None if there is no
    such lens) and `partial[lens]` (a plan over the dictionaries that have `lens`, with the
    position of each in it, by run position)."""

    full: object | None  # LensPlan
    partial: dict[str, tuple[object, dict[int, int]]]

    @property
    def first(self):
        """The plan that fixes how the run is cut (run.json's plan)."""
        return self.full if self.full is not None else next(iter(self.partial.values()))[0]

    def for_lens(self, lens: str, index: int):
        """(plan, position of dictionary `index` in it) for reading `lens`."""
        if lens in self.partial:
            plan, positions = self.partial[lens]
            return plan, positions[index]
        return self.full, index

    def map(self, change) -> RunPlans:
        """Every plan passed through `change`."""
        partial = {lens: (change(plan), positions) for lens, (plan, positions) in self.partial.items()}
        return replace(self, full=None if self.full is None else change(self.full), partial=partial)


def run_plans(lenses: tuple[str, ...], dictionaries: list, skipped: list[Skipped], plan) -> RunPlans:
    """`RunPlans` from `plan(lenses, dictionaries, features_by_position)`, the job's call of
    `plan_request` for a part of the run (`features_by_position` maps a run position to its
    position in `dictionaries`)."""
    partial_lenses = tuple(dict.fromkeys(s.lens for s in skipped))
    full_lenses = tuple(lens for lens in lenses if lens not in partial_lenses)
    full = plan(full_lenses, list(range(len(dictionaries)))) if full_lenses else None
    partial = {}
    for lens in partial_lenses:
        left_out = {s.dictionary_index for s in skipped if s.lens == lens}
        kept = [i for i in range(len(dictionaries)) if i not in left_out]
        partial[lens] = (plan((lens,), kept), {index: position for position, index in enumerate(kept)})
    return RunPlans(full, partial)
