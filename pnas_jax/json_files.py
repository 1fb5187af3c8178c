"""Kept for imports from before file_io.py; use pnas_jax.file_io."""

from pnas_jax.file_io import read_json, write_json  # noqa: F401
