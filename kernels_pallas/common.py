"""Helpers shared by the kernels: where they can run, float32 matmuls, padding to whole
blocks, complex numbers as real planes."""

import jax
import jax.numpy as jnp

PLATFORMS = ("tpu", "gpu")
HIGHEST = jax.lax.Precision.HIGHEST


def platform_unsupported(platform: str, kernels: str) -> str | None:
    """Why kernels_pallas.<kernels> cannot run on ``platform``, or None if it can."""
    if platform in PLATFORMS:
        return None
    return (
        f"the Pallas kernels run on TPU or GPU, not on {platform} (on CPU, call "
        f"kernels_pallas.{kernels}.{kernels}(..., platform='tpu' or 'gpu', interpret=True))"
    )


def chunk_size_unsupported(chunk_size: int) -> str | None:
    """Why the chunked kernels cannot take ``chunk_size``, or None if they can."""
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        return f"the kernels need a chunk_size that is a power of two >= 16, not {chunk_size}"
    return None


def chunked_unsupported(platform: str, kernels: str, *, segment_starts, chunk_size: int):
    """Why the chunked matrix-state kernels kernels_pallas.<kernels> cannot run on
    ``platform`` for these arguments, or None."""
    if (reason := platform_unsupported(platform, kernels)) is not None:
        return reason
    if segment_starts is not None:
        return "the kernels take no segment_starts (packed sequences run in 'chunked')"
    return chunk_size_unsupported(chunk_size)


def dot(a, b):  # a @ b
    return jnp.dot(a, b, precision=HIGHEST, preferred_element_type=jnp.float32)


def dot_nt(a, b):  # a @ bᵀ
    dims = (((1,), (1,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, precision=HIGHEST, preferred_element_type=jnp.float32)


def dot_tn(a, b):  # aᵀ @ b
    dims = (((0,), (0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, precision=HIGHEST, preferred_element_type=jnp.float32)


def round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, multiple: int, value: float = 0) -> jax.Array:
    """Pads ``axis`` of x at its end with ``value`` up to a multiple of ``multiple``."""
    padding = -x.shape[axis] % multiple
    if not padding:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, padding)
    return jnp.pad(x, widths, constant_values=value)


def pad_to(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Zero-pads ``axis`` of x at its end to ``size``."""
    return pad_axis(x, axis, size) if x.shape[axis] != size else x


def to_planes(x: jax.Array) -> tuple[jax.Array, ...]:
    """A real array as one plane, a complex one as its (real, imaginary) planes: Mosaic and
    Triton have no complex type, so the kernels multiply complex numbers plane by plane."""
    if jnp.iscomplexobj(x):
        return jnp.real(x), jnp.imag(x)
    return (x,)


def from_planes(planes: tuple[jax.Array, ...]) -> jax.Array:
    return jax.lax.complex(*planes) if len(planes) == 2 else planes[0]


def multiply_planes(a: list, b: list) -> list:
    """a * b for numbers given as one (real) or two (real, imaginary) planes."""
    if len(a) == 1:
        return [a[0] * b[0]]
    return [a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]]
