"""Sequence parallelism: an op's time axis split over a mesh axis.

An op given ``sequence_split=SequenceSplit(axis)``, with a mesh set by ``jax.set_mesh`` whose
``axis`` has n > 1 devices, runs as a ``shard_map`` over that axis. Each shard holds T / n
steps and runs the op's own form on them (the implementation asked for, never another);
what crosses the shard boundaries is gathered across the axis and folded in order from the
op's initial state, so every shard learns the state entering it:

    linear_recurrence        each shard runs from zero, then h_t += (∏_{s ≤ t} a_s) ⊙ h_in
    gated_linear_attention   each shard runs from zero, then o_t += scale · (q_t ⊙ exp(b_t))ᵀ S_in
                             with b_t = Σ_{s ≤ t} log_decay_s
    delta_rule,              a shard's effect on the state is affine, S_in ↦ M S_in + N, with
    generalized_delta_rule   M = ∏_t A_t [K, K] the product of its transitions (for the delta
                             rule A_t = exp(g_t)(I - β_t k_t k_tᵀ)); the outputs are affine in
                             S_in too, o_t = o_t⁰ + S_inᵀ r_t. The state's columns evolve
                             independently, so one run of the shard with values [v | 0] from
                             the state [0 | I] gives N and M as its final state and o⁰ and r
                             as its outputs (flash-linear-attention's context parallelism)
    selective_scan           each shard runs from zero, and from a state of ones with no
                             input, whose final state is ∏_t Ā_t; folded like
                             linear_recurrence, then each shard runs again from its entering
                             state (y_t reads h_t through C_t, so no [B, T, E, N] is formed)
    mlstm                    each shard's (C, n, m) from an empty memory folds as the max-plus
                             recurrence of the stabilizer and the linear one of C and n; then
                             each shard runs again from its entering state (the normalized
                             output is not linear in it)
    causal_conv1d            each shard reads the last W - 1 inputs of the shard before
    softmax_attention        keys, values, their positions, segment ids and forget gates are
                             gathered; the mask is taken on global positions

(segment starts inside a shard drop what enters it, as in the unsplit op). Memory per
device is that of T / n steps plus the gathered boundary states (or, for attention, the
gathered keys and values). Autodiff goes through the shard_map and the gathers.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from seqjax.typing import Array, PyTree


@dataclasses.dataclass(frozen=True)
class SequenceSplit:
    """The mesh axis the time axis is split over, and the mesh axes of the batch axis."""

    axis: str
    batch_axes: tuple[str, ...] = ()


def active_split(op: str, split: SequenceSplit | None) -> SequenceSplit | None:
    """The split ``op`` runs under: ``split`` (its ``sequence_split`` argument), or None when
    that is None or its axis has one device."""
    if split is None:
        return None
    if not isinstance(split, SequenceSplit):
        raise ValueError(f"{op}: sequence_split must be a SequenceSplit or None, got {split!r}")
    mesh = jax.sharding.get_abstract_mesh()
    for name in (split.axis, *split.batch_axes):
        if mesh.empty or name not in mesh.axis_names:
            raise ValueError(
                f"{op}: a sequence split over {split.axis!r} (batch over {split.batch_axes}) "
                f"needs a mesh with a {name!r} axis set by jax.set_mesh; the current mesh has "
                f"axes {tuple(mesh.axis_names)}"
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
        h, final = local_op(a, x)
        # The decay from the state entering the shard to each of its steps: a cumulative
        # product from the shard's first step (from its last one when reversed).
        decay_to = jnp.flip(jnp.cumprod(jnp.flip(a, 1), 1), 1) if reverse else jnp.cumprod(a, 1)
        total = decay_to[:, 0] if reverse else decay_to[:, -1]
        entering, final = _fold_shards(
            split.axis, initial_state, (total, final), _decay_then_add, reverse=reverse
        )
        return h + decay_to * entering[:, None], final

    return _shard_map("linear_recurrence", shard, split, (a, x), (initial_state,))


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

    q, k: [B, T, H, K], v: [B, T, H, V], log_decay: [B, T, H] or [B, T, H, K], starts: bool
    [B, T], all float32 but starts; initial_state: [B, H, K, V]. ``local_op`` starts from a
    zero state and includes ``scale`` in o. Returns o [B, T, H, V] and the final state.
    """

    def shard(q, k, v, log_decay, starts, initial_state):
        output, final = local_op(q, k, v, log_decay, starts)
        per_key = log_decay if log_decay.ndim == 4 else log_decay[..., None]
        cumulative = jnp.cumsum(per_key, axis=1)  # b_t, <= 0
        carried = jnp.cumsum(starts, axis=1) == 0  # steps before the shard's first start
        total = jnp.where(carried[:, -1, None, None], jnp.exp(cumulative[:, -1]), 0.0)
        entering, final = _fold_shards(
            split.axis, initial_state, (total[..., None], final), _decay_then_add
        )
        query_decayed = jnp.where(carried[..., None, None], q * jnp.exp(cumulative), 0.0)
        output += scale * jnp.einsum("bthk,bhkv->bthv", query_decayed, entering)
        return output, final

    return _shard_map(
        "gated_linear_attention", shard, split, (q, k, v, log_decay, starts), (initial_state,)
    )


def split_left_linear_state(
    op: str,
    local_op: Callable[..., tuple[Array, Array]],
    split: SequenceSplit,
    v: Array,
    arrays: Sequence[Array],
    initial_state: Array,
) -> tuple[Array, Array]:
    """``local_op(v, *arrays, initial_state) -> (o, final_state)`` run over ``split``, for an
    op whose state evolves as S_t = A_t S_{t-1} + (terms linear in v_t), A_t [K, K] acting
    on the left (the delta rules): see the module docstring.

    v: [B, T, H, V] and ``arrays`` [B, T, ...], float32 (starts bool); initial_state
    [B, H, K, V]. Returns o [B, T, H, V] and the final state, as the unsplit op.
    """

    def shard(v, *arrays_and_state):
        *arrays, initial_state = arrays_and_state
        batch, length, heads, value_size = v.shape
        key_size = initial_state.shape[2]
        identity = jnp.broadcast_to(
            jnp.eye(key_size, dtype=v.dtype), (batch, heads, key_size, key_size)
        )
        start = jnp.concatenate([jnp.zeros_like(initial_state), identity], axis=-1)
        values = jnp.concatenate([v, jnp.zeros((batch, length, heads, key_size), v.dtype)], -1)
        output, final = local_op(values, *arrays, start)
        # final = [N | M], output = [o⁰ | r] with r_t = scale · M_tᵀ q_t.
        transition, from_zero = final[..., value_size:], final[..., :value_size]
        entering, final = _fold_shards(split.axis, initial_state, (transition, from_zero), _affine)
        correction = jnp.einsum("bthk,bhkv->bthv", output[..., value_size:], entering)
        return output[..., :value_size] + correction, final

    return _shard_map(op, shard, split, (v, *arrays), (initial_state,))


def split_selective_scan(
    local_op: Callable[..., tuple[Array, Array]],
    split: SequenceSplit,
    arrays: Sequence[Array],
    parameters: Sequence[Array],
    initial_state: Array,
) -> tuple[Array, Array]:
    """``local_op(u, delta, input_matrix, output_matrix, starts, state_matrix, skip, state)
    -> (y, final_state)`` run over ``split``: ``arrays`` are (u, delta, input_matrix,
    output_matrix, starts) [B, T, ...], ``parameters`` (A [E, N], D [E]) are replicated and
    initial_state is [B, E, N]. Returns y [B, T, E] and the final state, as the unsplit op."""

    def shard(u, delta, input_matrix, output_matrix, starts, initial_state, *parameters):
        def run(u, state):
            return local_op(u, delta, input_matrix, output_matrix, starts, *parameters, state)

        _, own = run(u, jnp.zeros_like(initial_state))
        _, transition = run(jnp.zeros_like(u), jnp.ones_like(initial_state))  # ∏ Ā over the shard
        entering, final = _fold_shards(
            split.axis, initial_state, (transition, own), _decay_then_add
        )
        y, _ = run(u, entering)
        return y, final

    return _shard_map(
        "selective_scan",
        shard,
        split,
        tuple(arrays),
        (initial_state,),
        replicated=tuple(parameters),
    )


EMPTY_STABILIZER = -1e30
"""The stabilizer m of the empty memory each mLSTM shard first runs from: far below any m a
sequence reaches, so that max(m₀ + F, ·) leaves only the shard's own input gates (and, as a
finite number, it keeps every exponent of the op finite)."""


def split_mlstm(
    local_op: Callable[..., tuple[Array, PyTree]],
    split: SequenceSplit,
    arrays: Sequence[Array],
    log_forget: Array,
    starts: Array,
    initial_state: PyTree,
) -> tuple[Array, PyTree]:
    """``local_op(*arrays, starts, state) -> (h, MLSTMState)`` run over ``split``.

    ``arrays`` are the op's (q, k, v, input_gate, forget_gate) [B, T, ...]; log_forget
    log σ(f̃) [B, T, H] in float32; starts bool [B, T]; initial_state an MLSTMState.

    The memory C̃ = exp(m) C (and ñ = exp(m) n) is linear: after a shard with no segment
    start, C̃_out = exp(F) C̃_in + C̃_shard with F = Σ log f over the shard, and the stabilizer
    m_out = max(m_in + F, m_shard) by its closed form, m_shard the stabilizer of the shard run
    from an empty memory with m = ``EMPTY_STABILIZER``; after a start, the shard's own memory.
    """

    def shard(*arrays_and_state):
        *arrays, log_forget, starts, initial_state = arrays_and_state
        empty = type(initial_state)(
            jnp.zeros_like(initial_state.cell),
            jnp.zeros_like(initial_state.normalizer),
            jnp.full_like(initial_state.stabilizer, EMPTY_STABILIZER),
        )
        _, own = local_op(*arrays, starts, empty)
        keeps = (jnp.cumsum(starts, axis=1)[:, -1] == 0)[:, None]  # no start: [B, 1]
        summary = (own, jnp.sum(log_forget, axis=1), keeps)
        entering, final = _fold_shards(split.axis, initial_state, summary, _mlstm_fold)
        output, _ = local_op(*arrays, starts, entering)
        return output, final

    return _shard_map("mlstm", shard, split, (*arrays, log_forget, starts), (initial_state,))


def _mlstm_fold(summary, state):
    own, total, keeps = summary
    carried_stabilizer = state.stabilizer + total
    stabilizer = jnp.where(keeps, jnp.maximum(carried_stabilizer, own.stabilizer), own.stabilizer)
    # Masked before the exp: where the state is dropped its exponent may be positive.
    carried = jnp.exp(jnp.where(keeps, carried_stabilizer - stabilizer, -jnp.inf))
    added = jnp.exp(own.stabilizer - stabilizer)
    return type(state)(
        carried[..., None, None] * state.cell + added[..., None, None] * own.cell,
        carried[..., None] * state.normalizer + added[..., None] * own.normalizer,
        stabilizer,
    )


def split_causal_conv(
    local_op: Callable[..., tuple[Array, Array]],
    split: SequenceSplit,
    x: Array,
    starts: Array,
    kernel: Array,
    initial_state: Array,
) -> tuple[Array, Array]:
    """``local_op(x, starts, kernel, state) -> (y, final_state)`` run over ``split``: x
    [B, T, C], starts bool [B, T], kernel [W, C], initial_state [B, W-1, C]. A shard's final
    state holds its own last W - 1 inputs (those before its last segment start zeroed), which
    is the state entering the next one; each shard needs at least W - 1 steps."""

    def shard(x, starts, initial_state, kernel):
        _, own = local_op(x, starts, kernel, jnp.zeros_like(initial_state))
        entering, final = _fold_shards(split.axis, initial_state, own, lambda own, _: own)
        y, _ = local_op(x, starts, kernel, entering)
        return y, final

    pieces = jax.sharding.get_abstract_mesh().shape[split.axis]
    if x.shape[1] // pieces < initial_state.shape[1]:
        raise ValueError(
            f"causal_conv1d: a sequence split needs at least W - 1 = {initial_state.shape[1]} "
            f"steps per shard, got T / {pieces} = {x.shape[1] / pieces:g}"
        )
    return _shard_map(
        "causal_conv1d", shard, split, (x, starts), (initial_state,), replicated=(kernel,)
    )


def split_softmax_attention(
    local_op: Callable[..., Array],
    split: SequenceSplit,
    queries: Mapping[str, Array],
    keys: Mapping[str, Array],
    *,
    keys_end_with_queries: bool,
) -> Array:
    """``local_op(**queries, **keys) -> o`` run over ``split``, with every shard's queries
    ([B, Tq, ...]: q and its positions and segment ids) and all keys ([B, Tk, ...]: k, v, their
    positions, segment ids and ``log_forget``, gathered across the axis).

    The forget gate adds F_i - F_j, F the cumulative log forget gate; the query's F_i is a
    constant of its row, which the softmax drops, so any order of the gathered keys gives the
    same math. For precision (F_i - F_j is a difference of two sums over the sequence)
    ``keys_end_with_queries`` (causal self-attention at default positions) rotates the
    gathered keys so that the shard's own keys come last, where the op reads the queries' F,
    with the forget gates of the later keys moved to the front set to 0: the causal mask
    drops those keys, and the sums run over the same steps as in the unsplit op.
    """
    query_names, key_names = tuple(queries), tuple(keys)
    pieces = jax.sharding.get_abstract_mesh().shape[split.axis]

    def shard(*arrays):
        local_queries = dict(zip(query_names, arrays[: len(query_names)], strict=True))
        local_keys = arrays[len(query_names) :]
        length = local_keys[0].shape[1]
        gathered = {
            name: jax.lax.all_gather(x, split.axis, axis=1, tiled=True)
            for name, x in zip(key_names, local_keys, strict=True)
        }
        if keys_end_with_queries:
            later = (pieces - 1 - jax.lax.axis_index(split.axis)) * length
            gathered = {name: jnp.roll(x, later, axis=1) for name, x in gathered.items()}
            moved = jnp.arange(pieces * length) < later  # the later shards' keys, now first
            gathered["log_forget"] = jnp.where(moved[:, None], 0.0, gathered["log_forget"])
        return local_op(**local_queries, **gathered)

    return _shard_map(
        "softmax_attention", shard, split, (*queries.values(), *keys.values()), (), final=False
    )


def _decay_then_add(summary, state):
    """The state after a shard that decays it elementwise by ``decay`` and adds ``added``."""
    decay, added = summary
    return decay * state + added


def _affine(summary, state):
    """The state after a shard that maps S to M S + N, M [B, H, K, K]."""
    transition, added = summary
    return jnp.einsum("bhij,bhjv->bhiv", transition, state) + added


def _fold_shards(axis, initial_state, summary, combine, *, reverse=False):
    """The state entering this shard and the op's final state (with a leading axis of 1):
    every shard's ``summary`` (a pytree) gathered across ``axis`` and folded in order,
    ``state = combine(summary_i, state)``, from the first shard (from the last if reversed)."""
    gathered = jax.lax.all_gather(summary, axis)
    count = jax.tree.leaves(gathered)[0].shape[0]
    order = range(count - 1, -1, -1) if reverse else range(count)
    state, entering = initial_state, [None] * count
    for index in order:
        entering[index] = state
        state = combine(jax.tree.map(lambda g, i=index: g[i], gathered), state)
    here = jax.lax.axis_index(axis)
    entering = jax.tree.map(lambda *states: jnp.stack(states)[here], *entering)
    return entering, jax.tree.map(lambda s: s[None], state)


def _shard_map(op, shard, split, sequence_arrays, batch_arrays, *, replicated=(), final=True):
    """Runs ``shard(*sequence_arrays, *batch_arrays, *replicated)`` over ``split``: the
    sequence arrays [B, T, ...] split over the batch axes and ``split.axis``, the batch arrays
    (pytrees of [B, ...]) over the batch axes, the replicated ones whole. ``shard`` returns
    its outputs [B, T / n, ...] and, with ``final``, the op's final state with a leading
    axis of 1."""
    batch = split.batch_axes or None
    mesh = jax.sharding.get_abstract_mesh()
    pieces = mesh.shape[split.axis]
    for array in sequence_arrays:
        if array.shape[1] % pieces:
            raise ValueError(
                f"{op}: the sequence length ({array.shape[1]}) must be a multiple of the size "
                f"of mesh axis {split.axis!r} ({pieces}) to split it"
            )
    batch_pieces = 1
    for name in split.batch_axes:
        batch_pieces *= mesh.shape[name]
    if sequence_arrays[0].shape[0] % batch_pieces:
        batch = None  # a batch the batch axes do not divide is kept whole on every shard
    in_specs = (PartitionSpec(batch, split.axis),) * len(sequence_arrays)
    in_specs += (PartitionSpec(batch),) * len(batch_arrays) + (PartitionSpec(),) * len(replicated)
    out_specs = PartitionSpec(batch, split.axis)
    if final:
        # Every shard computes the same final state; each returns its copy along a leading
        # shard axis, and the first is kept, so its cotangent reaches one copy, not n.
        out_specs = (out_specs, PartitionSpec(split.axis, batch))
    # (The ops inside are not written for varying-axis checks, hence check_vma=False.)
    results = jax.shard_map(shard, in_specs=in_specs, out_specs=out_specs, check_vma=False)(
        *sequence_arrays, *batch_arrays, *replicated
    )
    if not final:
        return results
    outputs, finals = results
    return outputs, jax.tree.map(lambda f: f[0], finals)
