"""Autoregressive generation: a parallel prefill over the prompt, then one token at a time
with the carried state, greedy or sampled with a temperature and top-k."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_size
from seqjax.layers.embeddings import check_token_ids
from seqjax.models.backbone import LanguageModel
from seqjax.typing import Array


def sample_next(logits: Array, key: Array, *, temperature: float, top_k: int | None) -> Array:
    """Next token ids [B] from logits [B, V]: argmax if temperature == 0, else a sample from
    softmax(logits / temperature) restricted to the ``top_k`` largest logits."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k"))
def _generate(graphdef, params, prompt, key, *, max_new_tokens, temperature, top_k):
    model = nnx.merge(graphdef, params)
    logits, state = model(prompt, state=model.init_state(prompt.shape[0]))
    sample = functools.partial(sample_next, temperature=temperature, top_k=top_k)
    keys = jax.random.split(key, max_new_tokens)
    first = sample(logits[:, -1], keys[0])

    def decode_step(carry, step_key):
        token, state = carry
        logits, state = model(token[:, None], state=state)
        next_token = sample(logits[:, -1], step_key)
        return (next_token, state), next_token

    _, rest = jax.lax.scan(decode_step, (first, state), keys[1:])
    return jnp.concatenate([prompt, first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)


def generate(
    model: LanguageModel,
    prompt: Array,
    *,
    max_new_tokens: int,
    key: Array | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
) -> Array:
    """Continues ``prompt`` [B, P] by ``max_new_tokens`` tokens; returns [B, P + new].

    ``temperature=0`` is greedy decoding; otherwise ``key`` seeds the sampling.
    """
    prompt = jnp.asarray(prompt)
    check_token_ids(prompt, model.vocab_size, "prompt")
    check_size("max_new_tokens", max_new_tokens)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= model.vocab_size:
        raise ValueError(f"top_k must be in [1, {model.vocab_size}] or None, got {top_k}")
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    limit = model.backbone.context_limit
    total = prompt.shape[1] + max_new_tokens
    if limit is not None and total > limit:
        raise ValueError(
            f"prompt plus max_new_tokens is {total} tokens, more than the attention cache "
            f"holds ({limit}); raise the attention option cache_length"
        )
    graphdef, params = nnx.split(model)
    key = jax.random.key(0) if key is None else key
    return _generate(
        graphdef,
        params,
        prompt.astype(jnp.int32),
        key,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
    )
