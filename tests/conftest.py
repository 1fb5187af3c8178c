"""Shared fixtures: the reference data folder (../shared/reference), skipped with a reason if absent."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(
    os.environ.get("PNAS_REFERENCE_DIR", REPO.parent / "shared" / "reference" / "proxylessnas")
)
REFERENCE_NETS = ("proxyless_mobile", "proxyless_mobile_14", "proxyless_gpu", "proxyless_cpu")


@pytest.fixture
def reference_dir() -> pathlib.Path:
  if not REFERENCE_DIR.is_dir():
    pytest.skip(
        f"reference data folder {REFERENCE_DIR} is absent (it lives in ../shared/reference beside "
        "the checkout; set PNAS_REFERENCE_DIR to point elsewhere)"
    )
  return REFERENCE_DIR
