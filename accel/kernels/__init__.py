"""Numba kernels, one family per file: kernel, launcher (validate, allocate, pick the device), torch binding."""
