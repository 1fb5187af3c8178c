"""Moved to pnas_jax.file_io (kept so existing imports work until they are updated)."""
from pnas_jax.file_io import read_json, write_json  # noqa: F401
