"""The mixer registry builds mixers by name, reads their options through inheritance, and
rejects bad names, option types and option values clearly, naming the mixer and the option;
the arguments the backbone sets are no options, and a sequence split reaches only a mixer
that declares it.
"""

import pytest
from flax import nnx

from seqjax import layers
from seqjax.layers import registry
from seqjax.ops.sequence_parallel import SequenceSplit


def create(name, d_model=8, **options):
    return layers.create(name, d_model=d_model, rngs=nnx.Rngs(0), **options)


def test_available_lists_the_first_families():
    assert {"attention", "elman", "gru", "lstm"} <= set(layers.available())
    assert list(layers.available()) == sorted(layers.available())


def test_unknown_mixer_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown mixer 'lsmt'; available mixers: .*lstm"):
        create("lsmt")


def test_unknown_option_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'gru' got unknown option\(s\) num_heads; valid"):
        create("gru", num_heads=2)


def test_a_subclass_takes_its_parents_options_without_repeating_them(monkeypatch):
    monkeypatch.setattr(registry, "_MIXERS", dict(registry._MIXERS))  # forgotten afterwards

    class Scaled(nnx.Module):
        def __init__(self, d_model: int, *, rngs: nnx.Rngs, scale: float = 2.0, bias: int = 1):
            self.scale, self.bias = scale, bias

        def __call__(self, x, *, state=None, segment_starts=None):
            return self.scale * x + self.bias, state

    @layers.register("test_shifted")
    class Shifted(Scaled):
        def __init__(self, d_model: int, *, rngs: nnx.Rngs, bias: int = 5, **scaled_options):
            super().__init__(d_model, rngs=rngs, bias=bias, **scaled_options)

    assert layers.default_options("test_shifted") == {"scale": 2.0, "bias": 5}
    mixer = create("test_shifted", scale=3)
    assert (mixer.scale, mixer.bias, mixer.d_model) == (3, 5, 8)
    with pytest.raises(ValueError, match="mixer 'test_shifted': scale must be float"):
        create("test_shifted", scale="3")


def test_a_sequence_split_reaches_only_a_mixer_that_declares_it(monkeypatch):
    monkeypatch.setattr(registry, "_MIXERS", dict(registry._MIXERS))  # forgotten afterwards

    @layers.register("test_whole")
    class Whole(nnx.Module):
        def __init__(self, d_model: int, *, rngs: nnx.Rngs):
            pass

    @layers.register("test_split")
    class Split(Whole):
        def __init__(self, d_model: int, *, rngs: nnx.Rngs, sequence_split=None):
            self.sequence_split = sequence_split

    split = SequenceSplit("sequence")
    for name in layers.available():
        assert not set(registry.BACKBONE_ARGUMENTS) & set(layers.mixer_options(name))
    assert create("test_split", sequence_split=split).sequence_split == split
    assert create("test_whole", sequence_split=None).d_model == 8
    with pytest.raises(ValueError, match=r"mixer 'test_whole' cannot run sequence-parallel"):
        create("test_whole", sequence_split=split)


def test_the_mixers_that_extend_another_take_its_options():
    attention = layers.default_options("attention")
    fox = layers.default_options("fox_attention")
    assert fox == {**attention, "rotary": False, "output_gate": False, "forget_bias": 0.0}
    deltanet = layers.default_options("deltanet")
    assert layers.default_options("gated_deltanet") == {
        **deltanet,
        "output_gate": True,
        "dt_min": 0.001,
        "dt_max": 0.1,
    }
    assert set(deltanet) < set(layers.default_options("deltaproduct"))
    assert layers.mixer_options("min_gru") == layers.mixer_options("min_lstm")
    assert layers.mixer_options("min_gru") == ("hidden_size", "implementation")


@pytest.mark.parametrize(
    "name, options, message",
    [
        # Text reaches options whose default is None from the command line as it is.
        ("gru", dict(hidden_size="abc"), r"hidden_size must be int or None, got 'abc' \(str\)"),
        ("gla", dict(num_heads=2.0), r"num_heads must be int, got 2.0 \(float\)"),
        ("gru", dict(hidden_size=True), r"hidden_size must be int or None, got True \(bool\)"),
        ("lstm", dict(peepholes="yes"), r"peepholes must be bool, got 'yes'"),
        ("lru", dict(r_min="0.5"), r"r_min must be float, got '0.5'"),
        ("mamba", dict(implementation=3), r"implementation must be str or None, got 3"),
    ],
)
def test_option_types_are_checked_by_name(name, options, message):
    with pytest.raises(ValueError, match=rf"mixer '{name}': {message}"):
        create(name, **options)


def test_an_integer_passes_for_a_float_option():
    assert create("gla", expand_k=1).key_size == 8 // 4


@pytest.mark.parametrize("d_model", [-8, 0])
@pytest.mark.parametrize("name", layers.available())
def test_every_mixer_refuses_a_width_below_one(name, d_model):
    with pytest.raises(ValueError, match=rf"mixer '{name}': d_model must be an integer >= 1"):
        create(name, d_model=d_model)


def size_options():
    """(mixer, option) for every option of every mixer whose default is a positive integer
    (sLSTM's conv_width may be 0: no conv), and the sizes whose default None picks one."""
    defaults = [
        (name, option)
        for name in layers.available()
        for option, value in layers.default_options(name).items()
        if type(value) is int and value > 0 and (name, option) != ("slstm", "conv_width")
    ]
    sized_by_none = [
        ("attention", "num_kv_heads"),
        ("attention", "head_dim"),
        ("attention", "window"),
        ("deltanet", "value_dim"),
        ("gru", "hidden_size"),
        ("hgrn", "hidden_size"),
        ("lmu", "memory_size"),
        ("lru", "state_size"),
        ("mamba", "dt_rank"),
        ("min_lstm", "hidden_size"),
        ("rg_lru", "lru_width"),
        ("rwkv7", "icl_rank"),
        ("s5", "state_size"),
    ]
    return defaults + sized_by_none


@pytest.mark.parametrize("name, option", size_options())
def test_every_size_below_one_is_refused_by_name(name, option):
    with pytest.raises(ValueError, match=rf"mixer '{name}': .*{option}"):
        create(name, **{option: 0})


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("attention", dict(num_heads=3, num_kv_heads=2), r"num_kv_heads \(2\) must divide"),
        ("attention", dict(num_heads=3), r"num_heads \(3\) must divide d_model \(8\)"),
        ("attention", dict(window=0), "window must be an integer >= 1, got 0"),
        ("gla", dict(num_heads=0), "num_heads must be an integer >= 1, got 0"),
        ("gla", dict(num_heads=3), r"num_heads \(3\) must divide expand_k \* d_model \(4\)"),
        ("deltanet", dict(num_heads=3), r"num_heads \(3\) must divide d_model \(8\)"),
        ("mamba2", dict(head_dim=5), r"head_dim \(5\) must divide expand \* d_model \(16\)"),
        ("mlstm", dict(qkv_block_size=3), r"qkv_block_size \(3\) must divide"),
        ("retnet", dict(num_heads=3), r"num_heads \(3\) must divide d_model \(8\)"),
        ("rwkv6", dict(head_size=3), r"head_size \(3\) must divide d_model \(8\)"),
        ("slstm", dict(conv_width=-1), "conv_width must be an integer >= 0, got -1"),
        ("mamba", dict(dt_min=0.0), r"need 0 < dt_min <= dt_max, got 0.0 and 0.1"),
    ],
)
def test_bad_option_values_raise_clear_errors(name, options, message):
    with pytest.raises(ValueError, match=rf"mixer '{name}': {message}"):
        create(name, **options)
