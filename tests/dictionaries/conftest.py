"""Fixtures for the dictionary tests."""

import warnings

import pytest

from dictionary_helpers import TinyModelConfig


@pytest.fixture(scope="session")
def sae_lens():
    """sae_lens, imported once (its transformer_lens import warns about a deprecation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sae_lens
    return sae_lens


@pytest.fixture
def model():
    return TinyModelConfig()
