"""`DictionarySet`: the dictionaries the kernel runs over, as one object."""

from collections.abc import Iterable, Iterator

import equinox as eqx

from .dictionary import Dictionary
from .errors import DictionaryError
from .validation import validate_dictionary


class DictionarySet(eqx.Module):
    """An ordered collection of `Dictionary` (one per layer, or several per layer).

    Order is the caller's. Each `(name, layer)` appears once, so feature strings
    `Feature {name}/{layer}/{i}` are unique. When `model` is given every dictionary is
    validated against it (see `validate_dictionary`).
    """

    dictionaries: tuple[Dictionary, ...]

    def __init__(self, dictionaries: Iterable[Dictionary], model=None):
        items = tuple(dictionaries)
        if not items:
            raise DictionaryError("a DictionarySet needs at least one dictionary")
        seen: dict[tuple[str, int], int] = {}
        for i, d in enumerate(items):
            if not isinstance(d, Dictionary):
                raise DictionaryError(f"item {i} is a {type(d).__name__}, not a Dictionary")
            key = (d.name, d.layer)
            if key in seen:
                raise DictionaryError(
                    f"items {seen[key]} and {i} are both {d.name!r} at layer {d.layer}; "
                    "give one a different name (load_dictionary(..., name=...))"
                )
            seen[key] = i
            if model is not None:
                validate_dictionary(d, model)
        self.dictionaries = items

    def __len__(self) -> int:
        return len(self.dictionaries)

    def __iter__(self) -> Iterator[Dictionary]:
        return iter(self.dictionaries)

    def __getitem__(self, index: int) -> Dictionary:
        return self.dictionaries[index]

    @property
    def layers(self) -> tuple[int, ...]:
        """Layer of each dictionary, in order."""
        return tuple(d.layer for d in self.dictionaries)

    @property
    def names(self) -> tuple[str, ...]:
        """Name of each dictionary, in order."""
        return tuple(d.name for d in self.dictionaries)

    def at_layer(self, layer: int) -> tuple[Dictionary, ...]:
        """The dictionaries placed at `layer`, in order."""
        return tuple(d for d in self.dictionaries if d.layer == layer)

    def get(self, name: str, layer: int) -> Dictionary:
        """The dictionary called `name` at `layer`."""
        for d in self.dictionaries:
            if d.name == name and d.layer == layer:
                return d
        raise KeyError(f"no dictionary {name!r} at layer {layer}; have {list(zip(self.names, self.layers))}")

    def validate(self, model) -> "DictionarySet":
        """Validate every dictionary against `model`; returns self for chaining."""
        for d in self.dictionaries:
            validate_dictionary(d, model)
        return self
