"""The (gated) delta rule: a matrix state that is corrected, not only accumulated.

    S_t = exp(log_decay_t) (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ      S_t: [K, V]
    o_t = scale · S_tᵀ q_t

DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length") has no decay; Gated DeltaNet (Yang et al. 2025) a scalar
decay per head. β in [0, 2]: above 1 the transition I - β k kᵀ has a negative eigenvalue
(for unit-norm keys), which lets the state track parity ("Unlocking State-Tracking in
Linear RNNs Through Negative Eigenvalues", Grazzi et al. 2025).

    "recurrent"  the recurrence above, one step at a time (the reference)
    "chunked"    chunks of C steps in the WY / UT-transform form below
    "pallas"     the kernels of kernels_pallas/chunked_delta_rule (not yet available)

The chunked form rewrites each step as a gated linear-attention step with a corrected value
u_t = β_t (v_t - exp(log_decay_t) S_{t-1}ᵀ k_t), so S_t = exp(log_decay_t) S_{t-1} + k_t u_tᵀ.
Inside a chunk with cumulative log decay b and entering state S₀, the u's solve the unit
lower-triangular system

    (I + A) U = diag(β) (V - diag(exp(b)) K S₀),   A_ij = β_i exp(b_i - b_j) k_i·k_j, j < i,

after which outputs and the leaving state are those of gated linear attention with values U.
"""

import jax
import jax.numpy as jnp

from seqjax.ops.chunking import check_implementation, scan_over_chunks
from seqjax.typing import Array

IMPLEMENTATIONS = ("recurrent", "chunked", "pallas")


def delta_rule(
    q: Array,
    k: Array,
    v: Array,
    beta: Array,
    *,
    log_decay: Array | None = None,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    implementation: str | None = None,
) -> tuple[Array, Array]:
    """Runs S_t = exp(log_decay_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = scale S_tᵀ q_t.

    Args:
      q, k: [B, T, H, K] (keys are usually L2-normalized by the caller).  v: [B, T, H, V].
      beta: [B, T, H], in [0, 2].
      log_decay: None or [B, T, H], values <= 0.
      initial_state: [B, H, K, V] (zeros if None).
      segment_starts: bool [B, T]; the state is reset to zero before each true position.
      scale: multiplies the output; default 1.
      chunk_size: C of the chunked form.
      implementation: one of IMPLEMENTATIONS, or None for the best available.

    Returns:
      o [B, T, H, V] in v's dtype, and the final state [B, H, K, V] in float32.
    """
    _check_shapes(q, k, v, beta, log_decay, initial_state)
    batch, length, heads, key_size = q.shape
    if initial_state is None:
        initial_state = jnp.zeros((batch, heads, key_size, v.shape[-1]), jnp.float32)
    if segment_starts is not None and segment_starts.shape != (batch, length):
        raise ValueError(
            f"segment_starts must be [B, T] = {(batch, length)}, got {segment_starts.shape}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    implementation = check_implementation("delta_rule", implementation, IMPLEMENTATIONS)
    if log_decay is None:
        log_decay = jnp.zeros((batch, length, heads), jnp.float32)
    starts = (
        jnp.zeros((batch, length), bool) if segment_starts is None else segment_starts.astype(bool)
    )
    arrays = [jnp.asarray(t, jnp.float32) for t in (q, k, v, beta, log_decay)]
    initial_state = jnp.asarray(initial_state, jnp.float32)
    if implementation == "recurrent":
        output, final_state = _recurrent(*arrays, initial_state, starts)
    else:
        output, final_state = scan_over_chunks(
            _chunk, initial_state, (*arrays, starts), chunk_size=chunk_size
        )
    output = output * (1.0 if scale is None else scale)
    return output.astype(v.dtype), final_state


def _check_shapes(q, k, v, beta, log_decay, initial_state):
    if q.ndim != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, H, K] = {q.shape}, got {k.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with [B, T, H] = {q.shape[:3]}, got {v.shape}")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be [B, T, H] = {q.shape[:3]}, got {beta.shape}")
    if log_decay is not None and log_decay.shape != q.shape[:3]:
        raise ValueError(f"log_decay must be [B, T, H] = {q.shape[:3]}, got {log_decay.shape}")
    expected_state = (q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    if initial_state is not None and initial_state.shape != expected_state:
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {expected_state}, got {initial_state.shape}"
        )


def _recurrent(q, k, v, beta, log_decay, initial_state, starts):
    """The reference: one step at a time, time-major."""

    def step(state, inputs):
        q_t, k_t, v_t, beta_t, log_decay_t, start_t = inputs
        state = jnp.where(start_t[:, None, None, None], 0.0, state)
        beta_t, decay_t = beta_t[..., None, None], jnp.exp(log_decay_t)[..., None, None]
        removed = k_t[..., :, None] * jnp.einsum("bhk,bhkv->bhv", k_t, state)[..., None, :]
        state = (
            decay_t * (state - beta_t * removed) + beta_t * k_t[..., :, None] * v_t[..., None, :]
        )
        return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

    time_major = [jnp.swapaxes(t, 0, 1) for t in (q, k, v, beta, log_decay, starts)]
    final_state, output = jax.lax.scan(step, initial_state, time_major)
    return jnp.swapaxes(output, 0, 1), final_state


def _chunk(state, q, k, v, beta, log_decay, starts):
    """One chunk of the UT-transform form; arrays [B, C, H, ·], state [B, H, K, V]."""
    chunk_size = q.shape[1]
    cumulative = jnp.cumsum(log_decay, axis=1)  # b_i [B, C, H]
    segment = jnp.cumsum(starts, axis=1)  # 0 = the segment carried into the chunk
    positions = jnp.arange(chunk_size)
    same_segment = segment[:, :, None] == segment[:, None, :]  # [B, Ci, Cj]
    exponent = cumulative[:, :, None] - cumulative[:, None, :]  # b_i - b_j [B, Ci, Cj, H]

    def decay_where(mask):  # exp(b_i - b_j) on mask, 0 elsewhere (never a positive exponent)
        return jnp.exp(jnp.where(mask[..., None], exponent, -jnp.inf))

    strictly_lower = (positions[:, None] > positions[None, :]) & same_segment
    lower = (positions[:, None] >= positions[None, :]) & same_segment
    carried = (segment == 0)[..., None, None]  # [B, C, 1, 1]
    decayed_keys = jnp.where(carried, k * jnp.exp(cumulative)[..., None], 0.0)

    # (I + A) U = diag(β) (V - diag(exp(b)) K S₀), solved per batch and head.
    key_products = jnp.einsum("bihk,bjhk->bhij", k, k)
    a = jnp.moveaxis(beta[:, :, None] * decay_where(strictly_lower), 3, 1) * key_products
    right = beta[..., None] * (v - jnp.einsum("bihk,bhkv->bihv", decayed_keys, state))
    system = jnp.eye(chunk_size) + a  # [B, H, C, C], unit lower triangular
    u = jax.scipy.linalg.solve_triangular(
        system, jnp.moveaxis(right, 1, 2), lower=True, unit_diagonal=True
    )  # [B, H, C, V]

    # Outputs and leaving state of gated linear attention with values U.
    scores = jnp.einsum("bihk,bjhk->bhij", q, k) * jnp.moveaxis(decay_where(lower), 3, 1)
    decayed_queries = jnp.where(carried, q * jnp.exp(cumulative)[..., None], 0.0)
    output = jnp.einsum("bhij,bhjv->bihv", scores, u)
    output += jnp.einsum("bihk,bhkv->bihv", decayed_queries, state)

    total = cumulative[:, -1]  # [B, H]
    in_last_segment = (segment == segment[:, -1:])[..., None, None]
    to_end = jnp.where(in_last_segment, k * jnp.exp(total[:, None] - cumulative)[..., None], 0.0)
    keeps_state = (segment[:, -1] == 0)[:, None, None, None]
    state = jnp.where(keeps_state, jnp.exp(total)[..., None, None] * state, 0.0)
    state += jnp.einsum("bjhk,bhjv->bhkv", to_end, u)
    return output, state
