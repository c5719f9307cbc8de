"""The diagonal linear recurrence h_t = a_t ⊙ h_{t-1} + x_t, the op behind LRU, S4D/S5,
Mamba, RG-LRU, HGRN, minGRU/minLSTM and the LMU.

One public function, several ways to run it:

    "reference"    a loop over time that updates the output in place
    "associative"  lax.associative_scan over (a, x) pairs: (a₁, x₁) ∘ (a₂, x₂) = (a₁a₂, a₂x₁ + x₂)
                   (Blelloch 1990; Martin & Cundy 2018, "Parallelizing Linear Recurrent
                   Neural Nets Over Sequence Length")
    "chunked"      the loop inside chunks of ``chunk_size`` steps, all chunks at once, then a
                   loop over the chunk boundaries and one correction pass
    "pallas"       the kernels of kernels_pallas/linear_scan: a sequential scan in VMEM on
                   TPU, a scan blocked over features on GPU (on TPU and GPU only)

Every form shares one backward pass (a custom VJP): the adjoint of a linear recurrence is
the same recurrence run the other way,

    δ_t = ∂L/∂h_t + a_{t+1} δ_{t+1},   ∂L/∂x_t = δ_t,   ∂L/∂a_t = δ_t h_{t-1},

so the backward keeps only a, h and the initial state (O(B·T·F)) whatever the forward form.
States and arithmetic are float32 (complex64 for complex inputs) whatever the input dtype.
"""

import functools

import jax
import jax.numpy as jnp

import kernels_pallas.linear_scan as linear_scan_kernels
from seqjax.ops import checks, implementations, sequence_parallel
from seqjax.ops.implementations import REFERENCE
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

IMPLEMENTATIONS = (REFERENCE, "associative", "chunked", "pallas")
DEFAULT_CHUNK_SIZE = 64


def linear_recurrence(
    a: Array,
    x: Array,
    *,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    reverse: bool = False,
    implementation: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sequence_split: SequenceSplit | None = None,
) -> tuple[Array, Array]:
    """h_t = a_t ⊙ h_{t-1} + x_t over the time axis; returns ``(h, final_state)``.

    Args:
      a: decays [B, T, *F], or any shape that broadcasts to x's; real or complex floating
        point (|a| > 1 is allowed: the recurrence then grows).
      x: inputs [B, T, *F]; real or complex floating point.
      initial_state: h_{-1} [B, *F] (zeros if None); with ``reverse`` it is h_T.
      segment_starts: bool [B, T]; the state is reset to zero before each true position
        (with ``reverse``: the state carried from p into p - 1 is dropped when p starts).
      reverse: run from the last position to the first, h_t = a_t ⊙ h_{t+1} + x_t.
      implementation: one of IMPLEMENTATIONS, or None for the fastest on this platform.
      chunk_size: steps per chunk of the "chunked" form.
      sequence_split: run sequence-parallel over this mesh axis (seqjax.ops.sequence_parallel).

    Returns:
      h [B, T, *F] in the inputs' result dtype, and the final state [B, *F] in float32
      (complex64 if complex): h_{T-1}, or h_0 with ``reverse``.
    """
    op = "linear_recurrence"
    for name, array in (("a", a), ("x", x), ("initial_state", initial_state)):
        checks.floating(op, name, array, complex_allowed=True)
    a, x = jnp.asarray(a), jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{op}: x must be [B, T, *F], got shape {x.shape}")
    checks.nonempty(op, "x", x)
    try:
        a = jnp.broadcast_to(a, x.shape)
    except ValueError:
        raise ValueError(f"{op}: a {a.shape} must broadcast to the shape of x {x.shape}") from None
    batch, length = x.shape[:2]
    state_dtype = jnp.result_type(a.dtype, x.dtype, jnp.float32)
    if initial_state is None:
        initial_state = jnp.zeros((batch, *x.shape[2:]), state_dtype)
    checks.shape(op, "initial_state", initial_state, (batch, *x.shape[2:]), "[B, *F]")
    starts = checks.segment_starts(op, segment_starts, batch, length)
    if starts is not None:
        a = jnp.where(_expand(_reset_positions(starts, reverse), a.ndim), 0, a)
    checks.at_least_one(op, "chunk_size", chunk_size)
    implementation = _resolve(implementation, jnp.result_type(a.dtype, x.dtype))
    if (split := sequence_parallel.active_split(op, sequence_split)) is not None:
        local = functools.partial(
            linear_recurrence, reverse=reverse, implementation=implementation,
            chunk_size=chunk_size,
        )  # fmt: skip
        h, final_state = sequence_parallel.split_linear_recurrence(
            local, split, a.astype(state_dtype), x.astype(state_dtype),
            initial_state.astype(state_dtype), reverse=reverse,
        )  # fmt: skip
        return h.astype(jnp.result_type(a.dtype, x.dtype)), final_state
    if implementation == "pallas":  # the resets are already in a
        return linear_scan_kernels.linear_scan(
            a, x, platform=jax.default_backend(), initial_state=initial_state, reverse=reverse
        )
    h, final_state = _recurrence(
        implementation,
        reverse,
        chunk_size,
        a.astype(state_dtype),
        x.astype(state_dtype),
        initial_state.astype(state_dtype),
    )
    return h.astype(jnp.result_type(a.dtype, x.dtype)), final_state


def _expand(mask: Array, ndim: int) -> Array:
    return mask.reshape(mask.shape + (1,) * (ndim - 2))


def _reset_positions(segment_starts: Array, reverse: bool) -> Array:
    """Where the incoming state is dropped: at the starts, or (reversed) just before them."""
    if not reverse:
        return segment_starts
    return jnp.concatenate([segment_starts[:, 1:], jnp.zeros_like(segment_starts[:, :1])], axis=1)


def _resolve(implementation: str | None, dtype=jnp.float32) -> str:
    platform = jax.default_backend()
    # Measured by bench/scan.py: on CPU the in-place loop runs at about 2x one elementwise
    # pass, the chunked form at about 5x, the associative scan at about 9x (forward, freed
    # memory kept). On TPU and GPU the kernels read and write each element once (where they
    # were measured); otherwise the associative form uses the parallel hardware that a time
    # loop leaves idle.
    return implementations.select(
        "linear_recurrence",
        implementation,
        IMPLEMENTATIONS,
        preferred=(REFERENCE,) if platform == "cpu" else ("pallas", "associative"),
        cannot_run={"pallas": linear_scan_kernels.unsupported_reason(platform, dtype)},
        kernels="linear_scan",
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _recurrence(implementation, reverse, chunk_size, a, x, initial_state):
    return _FORWARD[implementation](a, x, initial_state, reverse, chunk_size)


def _recurrence_forward(implementation, reverse, chunk_size, a, x, initial_state):
    h, final_state = _recurrence(implementation, reverse, chunk_size, a, x, initial_state)
    return (h, final_state), (a, h, initial_state)


def _recurrence_backward(implementation, reverse, chunk_size, residuals, cotangents):
    a, h, initial_state = residuals
    h_cotangent, final_cotangent = cotangents
    if implementation == REFERENCE:
        return _sequential_backward(a, h, initial_state, h_cotangent, final_cotangent, reverse)
    ones = jnp.ones_like(a[:, :1])
    if reverse:
        # h_t = a_t h_{t+1} + x_t: the adjoint runs forward, δ_t = ct_t + a_{t-1} δ_{t-1}.
        a_adjoint = jnp.concatenate([ones, a[:, :-1]], axis=1)
        previous_h = jnp.concatenate([h[:, 1:], initial_state[:, None]], axis=1)
        edge = -1
    else:
        a_adjoint = jnp.concatenate([a[:, 1:], ones], axis=1)
        previous_h = jnp.concatenate([initial_state[:, None], h[:, :-1]], axis=1)
        edge = 0
    # The final state's cotangent enters where the adjoint recurrence starts.
    delta, _ = _FORWARD[implementation](
        a_adjoint, h_cotangent.astype(a.dtype), final_cotangent, not reverse, chunk_size
    )
    return delta * previous_h, delta, a[:, edge] * delta[:, edge]


_recurrence.defvjp(_recurrence_forward, _recurrence_backward)


def _sequential(a, x, initial_state, reverse, chunk_size):
    """A loop over time on a copy of x, each step overwriting x_t with h_t in place: no
    transposes, and no zero-filled buffer, which in a forward+backward XLA would share with
    the backward's and then copy once for each loop."""
    del chunk_size
    length = x.shape[1]

    def step(i, carry):
        state, h = carry
        t = length - 1 - i if reverse else i
        a_t = jax.lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)
        x_t = jax.lax.dynamic_index_in_dim(h, t, axis=1, keepdims=False)
        state = a_t * state + x_t
        return state, jax.lax.dynamic_update_index_in_dim(h, state, t, axis=1)

    final_state, h = jax.lax.fori_loop(0, length, step, (initial_state, x))
    return h, final_state


def _sequential_backward(a, h, initial_state, h_cotangent, final_cotangent, reverse):
    """The adjoint recurrence as one loop carrying a_t δ_t (the part of δ_{t-1} that flows
    back through step t) and writing δ, then ∂L/∂a = δ ⊙ h_{t-1} in one elementwise pass."""
    length = h.shape[1]
    h_cotangent = h_cotangent.astype(a.dtype)

    def step(i, carry):
        carried, delta = carry
        t = i if reverse else length - 1 - i
        delta_t = jax.lax.dynamic_index_in_dim(h_cotangent, t, 1, keepdims=False) + carried
        carried = jax.lax.dynamic_index_in_dim(a, t, 1, keepdims=False) * delta_t
        return carried, jax.lax.dynamic_update_index_in_dim(delta, delta_t, t, axis=1)

    initial_grad, delta = jax.lax.fori_loop(0, length, step, (final_cotangent, jnp.zeros_like(h)))
    if reverse:
        previous_h = jnp.concatenate([h[:, 1:], initial_state[:, None]], axis=1)
    else:
        previous_h = jnp.concatenate([initial_state[:, None], h[:, :-1]], axis=1)
    return delta * previous_h, delta, initial_grad


def _combine(earlier, later):
    """Composes two affine maps h -> a h + x, ``earlier`` applied first."""
    a_earlier, x_earlier = earlier
    a_later, x_later = later
    return a_earlier * a_later, a_later * x_earlier + x_later


def _associative(a, x, initial_state, reverse, chunk_size):
    del chunk_size
    edge = -1 if reverse else 0
    # Fold the initial state into the first step's input: h_first = a ⊙ h_init + x.
    x = x.at[:, edge].add(a[:, edge] * initial_state)
    _, h = jax.lax.associative_scan(_combine, (a, x), reverse=reverse, axis=1)
    return h, h[:, 0 if reverse else -1]


def _chunked(a, x, initial_state, reverse, chunk_size):
    """Local scans from zero in every chunk at once, a scan over the chunk boundaries, and
    a correction h_t = h_local_t + (∏ a within the chunk up to t) ⊙ h_chunk_start."""
    if reverse:
        h, final_state = _chunked(jnp.flip(a, 1), jnp.flip(x, 1), initial_state, False, chunk_size)
        return jnp.flip(h, 1), final_state
    batch, length, *features = x.shape
    chunk_size = min(chunk_size, length)
    padding = -length % chunk_size
    if padding:
        # Padded steps carry the state unchanged (a = 1, x = 0) and are dropped below.
        a = jnp.pad(a, [(0, 0), (0, padding)] + [(0, 0)] * len(features), constant_values=1)
        x = jnp.pad(x, [(0, 0), (0, padding)] + [(0, 0)] * len(features))
    num_chunks = (length + padding) // chunk_size
    a_chunks = a.reshape(batch, num_chunks, chunk_size, *features)
    x_chunks = x.reshape(batch, num_chunks, chunk_size, *features)

    def local_step(t, carry):
        state, decay, h, decays = carry
        a_t = jax.lax.dynamic_index_in_dim(a_chunks, t, axis=2, keepdims=False)
        x_t = jax.lax.dynamic_index_in_dim(x_chunks, t, axis=2, keepdims=False)
        state, decay = a_t * state + x_t, a_t * decay
        h = jax.lax.dynamic_update_index_in_dim(h, state, t, axis=2)
        decays = jax.lax.dynamic_update_index_in_dim(decays, decay, t, axis=2)
        return state, decay, h, decays

    zeros = jnp.zeros((batch, num_chunks, *features), x.dtype)
    chunk_ends, chunk_decays, local_h, local_decays = jax.lax.fori_loop(
        0,
        chunk_size,
        local_step,
        (zeros, jnp.ones_like(zeros), jnp.zeros_like(x_chunks), jnp.ones_like(x_chunks)),
    )
    # The state entering each chunk, from the state entering the one before it.
    after_chunk, final_state = _sequential(
        chunk_decays, chunk_ends, initial_state, reverse=False, chunk_size=None
    )
    entering = jnp.concatenate([initial_state[:, None], after_chunk[:, :-1]], axis=1)
    h = local_h + local_decays * entering[:, :, None]
    h = h.reshape(batch, num_chunks * chunk_size, *features)[:, :length]
    return h, final_state


_FORWARD = {REFERENCE: _sequential, "associative": _associative, "chunked": _chunked}
