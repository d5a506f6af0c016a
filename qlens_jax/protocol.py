"""Protocols: named sets of option values. `Protocol.PAPER` is the paper's, as the authors' code
and configurations run it; `Protocol.DEFAULT` leaves every option at this project's default.

The defaults keep what is mathematically placed (the tuned-lens translator of the point a vector
is written to, the dictionary's error term kept in clean runs, the next-token KL), and each of
the paper's conventions is a named option of its own (docs/evaluation.md says where and why they
differ). A protocol only sets those options; an option given explicitly with another value
contradicts it and is refused, naming both.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from qlens_jax.errors import InputError


class Protocol(StrEnum):
    DEFAULT = "default"
    PAPER = "paper"


# The token sample of `qlens signatures` (attribute -> value): the authors' `load_pile_sample`
# with every conf/*.yaml's num_samples, max_length, seed and dtype.
PAPER_SIGNATURES: dict[str, Any] = {
    "windows": "paper",
    "seed": 42,
    "num_samples": 1024,
    "max_length": 32,
    "dtype": "bfloat16",
    "k": 25,
}
# `qlens evaluate`: their activation corpus and feature sampler (I(T)), their steering and
# generation (O(T)), string matching, judge and tuned-lens index.
PAPER_EVALUATE: dict[str, Any] = {
    "contexts": "paper",
    "context_length": 128,
    "max_contexts": 4096,
    "min_contexts": 20,
    "require_contexts": True,
    "match": "strings",
    "k": 25,
    "top_promoted": None,
    "kl_targets": "0.25,0.5",
    "generate_tokens": 20,
    "temperature": 0.75,
    "kl_positions": "all",
    "alpha_search": "integer",
    "no_error_term": True,
    "prepend_bos": True,
    "tuned_lens_point": "layer",
    "judge_preset": "paper",
    "seed": 42,
    "dtype": "bfloat16",
}


def _given(parser, argv: list[str]) -> dict[str, str]:
    """The destinations of the options that appear in `argv`, with the option string used."""
    given = {}
    for action in parser._actions:
        for option in action.option_strings:
            if any(arg == option or arg.startswith(option + "=") for arg in argv):
                given[action.dest] = option
    return given


def apply_protocol(args, parser, argv: list[str], values: dict[str, Any]) -> None:
    """Set `values` on parsed `args` for `--protocol paper`; an option of `argv` that sets one of
    them to another value is an `InputError` naming both."""
    given = _given(parser, argv)
    for dest, value in values.items():
        if not hasattr(args, dest):
            continue
        if dest in given and getattr(args, dest) != value:
            shown = "(unset)" if value is None else ("" if value is True else value)
            raise InputError(
                f"--protocol paper sets {given[dest]} {shown}".rstrip() + f"; it contradicts {given[dest]} "
                f"{getattr(args, dest)}: drop one of them"
            )
        setattr(args, dest, value)


# The same protocol in the Python API: `EvaluationOptions.for_protocol` and `SampleSpec.for_protocol`.
PAPER_EVALUATION_OPTIONS: dict[str, Any] = {
    "k": 25,
    "min_contexts": 20,
    "require_contexts": True,
    "match": "strings",
    "top_s": None,
    "kl_targets": (0.25, 0.5),
    "generate_tokens": 20,
    "temperature": 0.75,
    "kl_positions": "all",
    "alpha_search": "integer",
    "error_term": False,
    "seed": 42,
}
PAPER_SAMPLE: dict[str, Any] = {
    "windows": "paper",
    "seed": 42,
    "num_samples": 1024,
    "max_length": 32,
    "prepend_bos": False,
}


def protocol_values(protocol: Protocol | str, values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of an options object under `protocol`: `values` (the protocol's)
    updated with `overrides`, which must not contradict them (`InputError` naming both)."""
    protocol = Protocol(protocol)
    if protocol is Protocol.DEFAULT:
        return dict(overrides)
    for name, value in overrides.items():
        if name in values and value != values[name]:
            raise InputError(f"Protocol.PAPER sets {name}={values[name]!r}; it contradicts {name}={value!r}")
    return {**values, **overrides}
