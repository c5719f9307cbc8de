"""The mixer registry builds mixers by name and rejects bad names and options clearly."""

import pytest
from flax import nnx

from seqjax import layers


def test_available_lists_the_first_families():
    assert {"attention", "elman", "gru", "lstm"} <= set(layers.available())
    assert list(layers.available()) == sorted(layers.available())


def test_unknown_mixer_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown mixer 'lsmt'; available mixers: .*lstm"):
        layers.create("lsmt", d_model=8, rngs=nnx.Rngs(0))


def test_unknown_option_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'gru' got unknown option\(s\) num_heads; valid"):
        layers.create("gru", d_model=8, rngs=nnx.Rngs(0), num_heads=2)


def test_bad_option_values_raise_clear_errors():
    with pytest.raises(ValueError, match="num_heads .* multiple of num_kv_heads"):
        layers.create("attention", d_model=8, rngs=nnx.Rngs(0), num_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="window must be a positive"):
        layers.create("attention", d_model=8, rngs=nnx.Rngs(0), window=0)
