"""Pallas kernels for TPU and GPU, one folder per op. Imports only jax."""
