"""The one exception type for dictionaries: bad files, bad metadata, or a bad fit to a model."""

from qlens_jax.errors import InputError


class DictionaryError(InputError):
    """A dictionary (SAE or transcoder) is malformed or does not fit the model it is used with.

    Raised for missing or corrupt files, missing keys, wrong shapes, non-finite weights,
    unsupported options and every mismatch between a dictionary and a model. The message
    always names the file or key involved and, for mismatches, both sides.
    """
