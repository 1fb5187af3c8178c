"""Interoperability with the reference PyTorch implementation: its checkpoint files and weights."""
