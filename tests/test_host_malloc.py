"""Huge pages for malloc (pnas_jax/host_malloc.py): when the re-execution happens, and that it takes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pnas_jax import host_malloc

SUPPORTED = host_malloc.glibc_has_tunable() and host_malloc.thp_available()
NEEDS_THP = pytest.mark.skipif(
    not SUPPORTED, reason="needs glibc >= 2.35 and transparent huge pages not set to 'never'")


@pytest.fixture
def supported(monkeypatch):
  monkeypatch.setattr(host_malloc, "glibc_has_tunable", lambda: True)
  monkeypatch.setattr(host_malloc, "thp_available", lambda path=None: True)


def test_environment_adds_the_tunable(supported):
  env = host_malloc.hugepage_environment({"HOME": "/h"})
  assert env == {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_environment_keeps_other_tunables(supported):
  env = host_malloc.hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ", [
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},  # the user's own choice: kept
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},  # already re-executed: no loop
    {"PNAS_HUGEPAGES": "off"},
    {"PNAS_HUGEPAGES": "0"},
])
def test_environment_leaves_the_process_alone(supported, environ):
  assert host_malloc.hugepage_environment(environ) is None


def test_unsupported_platform_is_left_alone(monkeypatch):
  monkeypatch.setattr(host_malloc, "glibc_has_tunable", lambda: False)
  assert host_malloc.hugepage_environment({}) is None


@pytest.mark.parametrize("setting, available", [
    ("always [madvise] never\n", True), ("[always] madvise never\n", True),
    ("always madvise [never]\n", False)])
def test_thp_setting(tmp_path, setting, available):
  path = tmp_path / "enabled"
  path.write_text(setting)
  assert host_malloc.thp_available(str(path)) is available
  assert not host_malloc.thp_available(str(tmp_path / "missing"))


# A child that re-executes itself, takes and touches 64 MiB with libc's malloc (not numpy, which
# asks for huge pages itself) and reports its GLIBC_TUNABLES and the huge pages of its memory.
_CHILD = """
import ctypes, os, sys
from pnas_jax.host_malloc import reexec_with_hugepages
reexec_with_hugepages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
p = libc.malloc(64 << 20)
ctypes.memset(p, 1, 64 << 20)
kib = sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
          if line.startswith("AnonHugePages:"))
print(os.environ.get("GLIBC_TUNABLES"), kib, sys.argv[1:])
"""


def _child(**env_extra: str) -> list[str]:
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PNAS_HUGEPAGES")}
  out = subprocess.run([sys.executable, "-c", _CHILD, "arg1", "arg 2"], env={**env, **env_extra},
                       capture_output=True, text=True, check=True).stdout.split(" ", 2)
  return out


@NEEDS_THP
def test_reexec_takes_effect():
  tunables, huge_kib, argv = _child()
  assert tunables == "glibc.malloc.hugetlb=1"
  assert int(huge_kib) >= 2048  # at least one 2 MiB page under the 64 MiB array
  assert argv.strip() == "['arg1', 'arg 2']"  # the same command line after the re-execution


@NEEDS_THP
def test_turned_off():
  tunables, huge_kib, _ = _child(PNAS_HUGEPAGES="off")
  assert tunables == "None"
  with open(host_malloc.THP_SETTING) as f:
    madvise_only = "[madvise]" in f.read()
  if madvise_only:  # without the tunable, malloc's memory is not madvised: no huge pages
    assert int(huge_kib) == 0
