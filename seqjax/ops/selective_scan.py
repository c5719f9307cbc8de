"""The selective scan (S6) of Mamba: a diagonal state space whose step size and input and
output matrices depend on the input.

"Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (Gu & Dao, 2023). Per
channel e of the width E and state index n, with a discretized decay Ā = exp(Δ_t A):

    h_t[e, n] = exp(Δ_t[e] A[e, n]) h_{t-1}[e, n] + Δ_t[e] B_t[n] u_t[e]
    y_t[e]    = Re(Σ_n C_t[n] h_t[e, n]) + D[e] u_t[e]

A is real (negative, the S4D-Real initialization) or complex (negative real part); B and C
may be complex with it. With ``negative_eigenvalues`` the decays exp(Δ A) ∈ (0, 1) become
2 exp(Δ A) - 1 ∈ (-1, 1) (Grazzi et al., 2025; real A only).

Its decays and inputs are [B, T, E, N], N times the size of the inputs [B, T, E]:

    "reference"  forms them whole and runs ``linear_recurrence`` over them; its backward
                 keeps them and h (four [B, T, E, N] arrays of float32)
    "chunked"    forms them one chunk of C steps at a time inside the loop over chunks,
                 runs ``linear_recurrence`` over the chunk from the state entering it and
                 contracts with C there: it never holds more than a few [B, C, E, N]; the
                 backward recomputes each chunk from its entering state
                 (seqjax.ops.chunking), so it keeps only those states [T / C, B, E, N]

Both cost O(B·T·E·N) arithmetic (the chunked form forms the decays twice, once more in the
backward); the chunked form's chunks stay in cache, where the reference streams [B, T, E, N]
arrays through memory. States are float32 (complex64 for a complex A, B or C) whatever the
input dtype.
"""

import functools

import jax.numpy as jnp

from seqjax.ops import checks, implementations, sequence_parallel
from seqjax.ops.chunking import scan_over_chunks
from seqjax.ops.implementations import REFERENCE
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

IMPLEMENTATIONS = (REFERENCE, "chunked")
# Measured by bench/mixers.py (mamba, B=4, D=256, T=4096, forward+backward): chunks of 16
# steps ran at 11.7k tokens/s, of 32 at 10.9k, of 64 at 9.4k, of 128 at 8.9k.
DEFAULT_CHUNK_SIZE = 16


def selective_scan(
    u: Array,
    delta: Array,
    state_matrix: Array,
    input_matrix: Array,
    output_matrix: Array,
    skip: Array | None = None,
    *,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    negative_eigenvalues: bool = False,
    implementation: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sequence_split: SequenceSplit | None = None,
) -> tuple[Array, Array]:
    """The S6 recurrence of the module docstring; returns ``(y, final_state)``.

    Args:
      u: inputs [B, T, E], floating point.
      delta: step sizes Δ [B, T, E] (positive; Mamba takes a softplus).
      state_matrix: A [E, N], real or complex (the diagonal of the continuous state matrix).
      input_matrix: B_t [B, T, N], real or complex.
      output_matrix: C_t [B, T, N], real or complex.
      skip: D [E], or None for no skip term.
      initial_state: h_{-1} [B, E, N] (zeros if None).
      segment_starts: bool [B, T]; the state is reset to zero before each true position.
      negative_eigenvalues: decays 2 exp(Δ A) - 1 instead of exp(Δ A) (real A only).
      implementation: one of IMPLEMENTATIONS, or None ("chunked").
      chunk_size: steps per chunk of the "chunked" form.
      sequence_split: run sequence-parallel over this mesh axis (seqjax.ops.sequence_parallel).

    Returns:
      y [B, T, E] in u's dtype, and h_{T-1} [B, E, N] in float32 (complex64 if complex).
    """
    op = "selective_scan"
    for name, array in (("u", u), ("delta", delta), ("skip", skip)):
        checks.floating(op, name, array)
    for name, array in (
        ("state_matrix", state_matrix),
        ("input_matrix", input_matrix),
        ("output_matrix", output_matrix),
        ("initial_state", initial_state),
    ):
        checks.floating(op, name, array, complex_allowed=True)
    if jnp.ndim(u) != 3:
        raise ValueError(f"{op}: u must be [B, T, E], got shape {jnp.shape(u)}")
    checks.nonempty(op, "u", u)
    batch, length, width = jnp.shape(u)
    if jnp.ndim(state_matrix) != 2 or jnp.shape(state_matrix)[0] != width:
        raise ValueError(
            f"{op}: state_matrix must be [E, N] with E = {width}, got shape "
            f"{jnp.shape(state_matrix)}"
        )
    size = jnp.shape(state_matrix)[1]
    checks.shape(op, "delta", delta, (batch, length, width), "[B, T, E]")
    checks.shape(op, "input_matrix", input_matrix, (batch, length, size), "[B, T, N]")
    checks.shape(op, "output_matrix", output_matrix, (batch, length, size), "[B, T, N]")
    checks.shape(op, "skip", skip, (width,), "[E]")
    checks.shape(op, "initial_state", initial_state, (batch, width, size), "[B, E, N]")
    starts = checks.segment_starts(op, segment_starts, batch, length)
    checks.at_least_one(op, "chunk_size", chunk_size)
    state_dtype = jnp.result_type(state_matrix, input_matrix, output_matrix, jnp.float32)
    if negative_eigenvalues and jnp.issubdtype(jnp.result_type(state_matrix), jnp.complexfloating):
        raise ValueError(f"{op}: negative_eigenvalues needs a real state_matrix, got complex")
    implementation = implementations.select(
        op, implementation, IMPLEMENTATIONS, preferred=("chunked",)
    )
    if initial_state is None:
        initial_state = jnp.zeros((batch, width, size), state_dtype)
    if starts is None:
        starts = jnp.zeros((batch, length), bool)
    u32 = u.astype(jnp.float32)
    arrays = (
        u32,
        delta.astype(jnp.float32),
        input_matrix.astype(state_dtype),
        output_matrix.astype(state_dtype),
        starts,
    )
    parameters = (
        state_matrix.astype(jnp.result_type(state_matrix, jnp.float32)),
        jnp.zeros(width, jnp.float32) if skip is None else skip.astype(jnp.float32),
    )
    initial_state = initial_state.astype(state_dtype)
    if implementation == REFERENCE:
        y, final_state = _reference(
            *arrays, *parameters, initial_state, negative_eigenvalues, sequence_split
        )
    else:
        local = functools.partial(
            _chunked, chunk_size=chunk_size, negative_eigenvalues=negative_eigenvalues
        )
        if (split := sequence_parallel.active_split(op, sequence_split)) is not None:
            y, final_state = sequence_parallel.split_selective_scan(
                local, split, arrays, parameters, initial_state
            )
        else:
            y, final_state = local(*arrays, *parameters, initial_state)
    return y.astype(u.dtype), final_state


def discretize(delta: Array, state_matrix: Array, *, negative_eigenvalues: bool) -> Array:
    """Ā = exp(Δ A) [..., E, N] from Δ [..., E] and A [E, N]; 2 exp(Δ A) - 1 with
    ``negative_eigenvalues``."""
    decay = jnp.exp(delta[..., None] * state_matrix)
    return 2.0 * decay - 1.0 if negative_eigenvalues else decay


def _decays_and_inputs(u, delta, input_matrix, starts, state_matrix, negative_eigenvalues):
    """Ā [B, T, E, N] (zero where a segment starts) and Δ_t B_t u_t [B, T, E, N]."""
    decay = discretize(delta, state_matrix, negative_eigenvalues=negative_eigenvalues)
    decay = jnp.where(starts[:, :, None, None], 0, decay)
    inputs = (delta * u)[..., None] * input_matrix[:, :, None, :]
    return decay, inputs


def _read_out(h: Array, output_matrix: Array, u: Array, skip: Array) -> Array:
    """y_t = Re(Σ_n C_t[n] h_t[e, n]) + D u_t: [B, T, E]."""
    return jnp.real(jnp.einsum("bten,btn->bte", h, output_matrix)) + skip * u


def _reference(u, delta, input_matrix, output_matrix, starts, state_matrix, skip,
               initial_state, negative_eigenvalues, sequence_split):  # fmt: skip
    decay, inputs = _decays_and_inputs(
        u, delta, input_matrix, starts, state_matrix, negative_eigenvalues
    )
    h, final_state = linear_recurrence(
        decay, inputs, initial_state=initial_state, sequence_split=sequence_split
    )
    return _read_out(h, output_matrix, u, skip), final_state


def _chunked(u, delta, input_matrix, output_matrix, starts, state_matrix, skip, initial_state,
             *, chunk_size, negative_eigenvalues):  # fmt: skip
    def chunk(state, u, delta, input_matrix, output_matrix, starts, state_matrix, skip):
        decay, inputs = _decays_and_inputs(
            u, delta, input_matrix, starts, state_matrix, negative_eigenvalues
        )
        h, state = linear_recurrence(decay, inputs, initial_state=state)
        return _read_out(h, output_matrix, u, skip), state

    # Padded steps have Δ = 0: a decay of 1 and no input, so they leave the state as it is.
    return scan_over_chunks(
        chunk,
        initial_state,
        (u, delta, input_matrix, output_matrix, starts),
        chunk_size=chunk_size,
        shared=(state_matrix, skip),
    )
