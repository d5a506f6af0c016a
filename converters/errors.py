"""Errors raised by converters: each names the offending file, key or option."""

from qlens_jax.errors import InputError


class ConversionError(InputError):
    """A checkpoint or config that cannot be converted faithfully."""


class UnsupportedOptionError(ConversionError):
    """A config option the converter does not implement (never silently ignored)."""
