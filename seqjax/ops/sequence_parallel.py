"""Sequence parallelism for the recurrences: the time axis split over a mesh axis.

Inside ``split_sequence(axis)`` (and a mesh set with ``jax.set_mesh``), ``linear_recurrence``
and ``gated_linear_attention`` run as a ``shard_map`` over that mesh axis. Each of the n
shards runs its piece of the sequence from a zero state; the shards' final states and decay
products are gathered across the axis; each shard folds those of the shards before it into
the state h_in entering it, starting from the op's initial state, and corrects its outputs:

    linear_recurrence        h_t += (∏_{s ≤ t in the shard} a_s) ⊙ h_in
    gated_linear_attention   o_t += scale · (q_t ⊙ exp(b_t))ᵀ S_in,   b_t = Σ_{s ≤ t} log_decay_s

(up to the shard's first segment start, where the carried state is dropped). The final state
is the fold over every shard. Memory per device is that of T / n steps plus the n gathered
states; autodiff goes through the shard_map and the gather.
"""

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from seqjax.typing import Array


@dataclasses.dataclass(frozen=True)
class SequenceSplit:
    """The mesh axis the time axis is split over, and the mesh axes of the batch axis."""

    axis: str
    batch_axes: tuple[str, ...] = ()


_CURRENT: contextvars.ContextVar[SequenceSplit | None] = contextvars.ContextVar(
    "sequence_split", default=None
)


@contextlib.contextmanager
def split_sequence(axis: str, batch_axes: Sequence[str] = ()) -> Iterator[None]:
    """Runs the recurrences traced inside this context sequence-parallel over mesh ``axis``.

    ``batch_axes`` are the mesh axes the batch axis is split over (the recurrences keep it so).
    A mesh with ``axis`` must be set (``jax.set_mesh``) when the ops are traced.
    """
    token = _CURRENT.set(SequenceSplit(axis, tuple(batch_axes)))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_split() -> SequenceSplit | None:
    """The split of the enclosing ``split_sequence`` if its axis has more than one device."""
    split = _CURRENT.get()
    if split is None:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or split.axis not in mesh.axis_names:
        raise ValueError(
            f"split_sequence({split.axis!r}) needs a mesh with a {split.axis!r} axis set by "
            f"jax.set_mesh; the current mesh has axes {tuple(mesh.axis_names)}"
        )
    return split if mesh.shape[split.axis] > 1 else None


def split_linear_recurrence(
    local_op: Callable[..., tuple[Array, Array]],
    split: SequenceSplit,
    a: Array,
    x: Array,
    initial_state: Array,
    *,
    reverse: bool,
) -> tuple[Array, Array]:
    """``local_op(a, x) -> (h, final_state)`` (from a zero state) run over ``split``.

    a, x: [B, T, *F] in the state dtype, with segment resets already folded into a (a = 0);
    initial_state: [B, *F]. Returns h [B, T, *F] and the final state, as the unsplit op.
    """

    def shard(a, x, initial_state):
        with _local():
            h, final = local_op(a, x)
        # The decay from the state entering the shard to each of its steps: a cumulative
        # product from the shard's first step (from its last one when reversed).
        decay_to = jnp.flip(jnp.cumprod(jnp.flip(a, 1), 1), 1) if reverse else jnp.cumprod(a, 1)
        total = decay_to[:, 0] if reverse else decay_to[:, -1]
        entering, final = _fold_shards(
            split.axis, initial_state, total, final, lambda d, s: d * s, reverse=reverse
        )
        return h + decay_to * entering[:, None], final

    return _shard_map(shard, split, (a, x), (initial_state,))


def split_gated_linear_attention(
    local_op: Callable[..., tuple[Array, Array]],
    split: SequenceSplit,
    q: Array,
    k: Array,
    v: Array,
    log_decay: Array,
    starts: Array,
    initial_state: Array,
    *,
    scale: float,
) -> tuple[Array, Array]:
    """``local_op(q, k, v, log_decay, starts) -> (o, final_state)`` run over ``split``.

    q, k: [B, T, H, K], v: [B, T, H, V], log_decay: [B, T, H, K|1], starts: bool [B, T], all
    float32 but starts; initial_state: [B, H, K, V]. ``local_op`` starts from a zero state and
    includes ``scale`` in o. Returns o [B, T, H, V] and the final state, as the unsplit op.
    """

    def shard(q, k, v, log_decay, starts, initial_state):
        with _local():
            output, final = local_op(q, k, v, log_decay, starts)
        cumulative = jnp.cumsum(log_decay, axis=1)  # b_t, <= 0
        carried = jnp.cumsum(starts, axis=1) == 0  # steps before the shard's first start
        total = jnp.where(carried[:, -1, None, None], jnp.exp(cumulative[:, -1]), 0.0)
        entering, final = _fold_shards(
            split.axis, initial_state, total, final, lambda d, s: d[..., None] * s, reverse=False
        )
        query_decayed = jnp.where(carried[..., None, None], q * jnp.exp(cumulative), 0.0)
        output += scale * jnp.einsum("bthk,bhkv->bthv", query_decayed, entering)
        return output, final

    return _shard_map(shard, split, (q, k, v, log_decay, starts), (initial_state,))


def _fold_shards(axis, initial_state, total_decay, final_from_zero, apply_decay, *, reverse):
    """The state entering this shard and the op's final state, from every shard's decay
    product and final state gathered across ``axis`` and folded in order from the first
    shard (from the last when reversed)."""
    decays = jax.lax.all_gather(total_decay, axis)
    finals = jax.lax.all_gather(final_from_zero, axis)
    count = decays.shape[0]
    order = range(count - 1, -1, -1) if reverse else range(count)
    state, entering = initial_state, [None] * count
    for index in order:
        entering[index] = state
        state = apply_decay(decays[index], state) + finals[index]
    return jnp.stack(entering)[jax.lax.axis_index(axis)], state[None]


def _shard_map(shard, split, sequence_arrays, batch_arrays):
    batch = split.batch_axes or None
    batch_size, length = sequence_arrays[0].shape[:2]
    mesh = jax.sharding.get_abstract_mesh()
    pieces = mesh.shape[split.axis]
    if length % pieces:
        raise ValueError(
            f"the sequence length ({length}) must be a multiple of the size of mesh axis "
            f"{split.axis!r} ({pieces}) to split it"
        )
    batch_pieces = 1
    for name in split.batch_axes:
        batch_pieces *= mesh.shape[name]
    if batch_size % batch_pieces:
        batch = None  # a batch the batch axes do not divide is kept whole on every shard
    in_specs = (PartitionSpec(batch, split.axis),) * len(sequence_arrays)
    in_specs += (PartitionSpec(batch),) * len(batch_arrays)
    # Every shard computes the same final state; each returns its copy along a leading
    # shard axis, and the first is kept, so its cotangent reaches one copy, not n. (The
    # ops inside are not written for varying-axis checks, hence check_vma=False.)
    outputs, finals = jax.shard_map(
        shard,
        in_specs=in_specs,
        out_specs=(PartitionSpec(batch, split.axis), PartitionSpec(split.axis, batch)),
        check_vma=False,
    )(*sequence_arrays, *batch_arrays)
    return outputs, finals[0]


@contextlib.contextmanager
def _local() -> Iterator[None]:
    """Inside a shard the op runs on its own piece of the sequence."""
    token = _CURRENT.set(None)
    try:
        yield
    finally:
        _CURRENT.reset(token)
