"""Every parameter declares its logical axes where it is created (layers/partitioning.py):
one name or None per dimension, from the names the sharding rules know, in every registered
mixer and variant (so a new mixer that forgets fails here), and in the backbone with its
embeddings, norms, MLPs and heads.
"""

import jax.numpy as jnp
import pytest
from flax import nnx
from layer_testing import MIXER_CASES

from seqjax import layers
from seqjax.layers.partitioning import EMBED, HEADS, MLP, VOCAB, linear, logical_axes, param
from seqjax.models import Backbone, Classifier, LanguageModel

LOGICAL_AXES = (EMBED, HEADS, MLP, VOCAB, None)


def undeclared_parameters(module):
    """'path: what is wrong' for each parameter of ``module`` without valid logical axes."""
    problems = []
    for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        axes = logical_axes(variable)
        where = ".".join(map(str, path))
        if axes is None or len(axes) != variable.ndim:
            problems.append(f"{where}: axes {axes} for shape {variable.shape}")
        elif any(axis not in LOGICAL_AXES for axis in axes):
            problems.append(f"{where}: unknown logical axis in {axes}")
    return problems


@pytest.mark.parametrize(
    "name, options", MIXER_CASES, ids=[f"{name}-{i}" for i, (name, _) in enumerate(MIXER_CASES)]
)
def test_every_mixer_parameter_declares_its_axes(name, options):
    # Built abstractly, as training builds a model before placing it.
    mixer = nnx.eval_shape(lambda: layers.create(name, d_model=16, rngs=nnx.Rngs(0), **options))
    assert undeclared_parameters(mixer) == []
    declared = {axis for _, v in nnx.to_flat_state(nnx.state(mixer)) for axis in logical_axes(v)}
    assert HEADS in declared, "tensor parallelism finds no inner width to split"


def test_every_backbone_and_head_parameter_declares_its_axes():
    def backbone(**inputs):
        return Backbone(
            d_model=16, num_layers=2, pattern="gru,mamba", norm="layer", rngs=nnx.Rngs(0), **inputs
        )

    language_model = LanguageModel(backbone(vocab_size=11), 11, rngs=nnx.Rngs(1))
    classifier = Classifier(backbone(input_dim=3), 5, rngs=nnx.Rngs(1))
    assert undeclared_parameters(language_model) == []
    assert undeclared_parameters(classifier) == []
    params = nnx.state(language_model, nnx.Param)
    assert logical_axes(params["backbone"]["embed"]["embedding"]) == (VOCAB, EMBED)
    assert logical_axes(params["backbone"]["blocks"][0]["mlp"]["down"]["kernel"]) == (MLP, EMBED)
    assert logical_axes(params["head"]["kernel"]) == (EMBED, VOCAB)


def test_parameters_are_named_at_creation_and_not_sharded_then():
    kernel = linear(4, 6, EMBED, HEADS, rngs=nnx.Rngs(0)).kernel
    assert logical_axes(kernel) == (EMBED, HEADS)
    assert kernel.get_value().sharding.is_fully_replicated  # training places it, not creation
    assert logical_axes(param(jnp.zeros((3, 2)), None, HEADS)) == (None, HEADS)
    with pytest.raises(ValueError, match=r"1 logical axes \('heads',\) for a parameter of shape"):
        param(jnp.zeros((3, 2)), HEADS)
