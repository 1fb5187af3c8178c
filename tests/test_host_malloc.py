"""The host allocator (pnas_jax/host_malloc.py): which setting the re-execution adds, when it
leaves the process alone, and that it takes effect in a real child process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pnas_jax import host_malloc

TCMALLOC = host_malloc.find_tcmalloc()
THP = host_malloc.glibc_has_tunable() and host_malloc.thp_available()
NEEDS_TCMALLOC = pytest.mark.skipif(
    TCMALLOC is None, reason="needs tcmalloc (Debian: apt-get install libtcmalloc-minimal4)")
NEEDS_THP = pytest.mark.skipif(
    not THP, reason="needs glibc >= 2.35 and transparent huge pages not set to 'never'")


@pytest.fixture
def thp(monkeypatch):
  monkeypatch.setattr(host_malloc, "glibc_has_tunable", lambda: True)
  monkeypatch.setattr(host_malloc, "thp_available", lambda path=None: True)


@pytest.fixture
def fake_tcmalloc(tmp_path, monkeypatch):
  lib = tmp_path / "libtcmalloc_minimal.so.4"
  lib.write_bytes(b"")
  monkeypatch.setattr(host_malloc, "find_tcmalloc", lambda: str(lib))
  return str(lib)


@pytest.fixture
def no_tcmalloc(monkeypatch):
  monkeypatch.setattr(host_malloc, "find_tcmalloc", lambda: None)


def test_tcmalloc_is_preloaded_first(thp, fake_tcmalloc):
  env = host_malloc.host_malloc_environment({"HOME": "/h", "LD_PRELOAD": "/x/libfoo.so"})
  assert env == {"HOME": "/h", "LD_PRELOAD": f"{fake_tcmalloc}:/x/libfoo.so"}
  assert host_malloc.host_malloc_environment(env) is None  # re-executed: no loop


def test_without_tcmalloc_the_tunable_is_added(thp, no_tcmalloc):
  env = host_malloc.host_malloc_environment({"HOME": "/h"})
  assert env == {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert host_malloc.host_malloc_environment(env) is None
  env = host_malloc.host_malloc_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_hugepages_choice_skips_tcmalloc(thp, fake_tcmalloc):
  env = host_malloc.host_malloc_environment({host_malloc.ENV_VAR: "hugepages"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and "LD_PRELOAD" not in env


def test_a_library_path_is_preloaded(tmp_path):
  lib = tmp_path / "libmymalloc.so"
  lib.write_bytes(b"")
  env = host_malloc.host_malloc_environment({host_malloc.ENV_VAR: str(lib)})
  assert env["LD_PRELOAD"] == str(lib)
  assert host_malloc.host_malloc_environment(env) is None


def test_a_missing_library_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"PNAS_HOST_MALLOC='.*nothere.so'.*auto, hugepages"):
    host_malloc.host_malloc_environment({host_malloc.ENV_VAR: str(tmp_path / "nothere.so")})


@pytest.mark.parametrize("environ", [
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},  # the user's own choice: kept
    {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},  # the user's own malloc: kept
    {"PNAS_HOST_MALLOC": "off"},
    {"PNAS_HOST_MALLOC": "0"},
])
def test_environment_leaves_the_process_alone(thp, no_tcmalloc, environ):
  assert host_malloc.host_malloc_environment(environ) is None


def test_unsupported_platform_is_left_alone(monkeypatch, no_tcmalloc):
  monkeypatch.setattr(host_malloc, "glibc_has_tunable", lambda: False)
  assert host_malloc.host_malloc_environment({}) is None


def test_environment_choosing_drops_inherited_settings():
  env = host_malloc.environment_choosing(
      {"HOME": "/h", "LD_PRELOAD": "/l/libtcmalloc_minimal.so.4",
       "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", host_malloc.ENV_VAR: "off"}, "hugepages")
  assert env == {"HOME": "/h", host_malloc.ENV_VAR: "hugepages"}


def test_find_tcmalloc(tmp_path):
  assert host_malloc.find_tcmalloc([str(tmp_path)]) is None
  (tmp_path / "libtcmalloc.so.4").write_bytes(b"")
  assert host_malloc.find_tcmalloc([str(tmp_path / "none"), str(tmp_path)]) == str(
      tmp_path / "libtcmalloc.so.4")


@pytest.mark.parametrize("setting, available", [
    ("always [madvise] never\n", True), ("[always] madvise never\n", True),
    ("always madvise [never]\n", False)])
def test_thp_setting(tmp_path, setting, available):
  path = tmp_path / "enabled"
  path.write_text(setting)
  assert host_malloc.thp_available(str(path)) is available
  assert not host_malloc.thp_available(str(tmp_path / "missing"))


# A child that re-executes itself, takes and touches 64 MiB with malloc (not numpy, which asks for
# huge pages itself) and reports its LD_PRELOAD, GLIBC_TUNABLES, whether tcmalloc is mapped, the
# huge pages of its memory, and its command line.
_CHILD = """
import ctypes, os, sys
from pnas_jax.host_malloc import reexec_with_host_malloc
reexec_with_host_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
p = libc.malloc(64 << 20)
ctypes.memset(p, 1, 64 << 20)
kib = sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
          if line.startswith("AnonHugePages:"))
mapped = "tcmalloc" in open("/proc/self/maps").read()
print(repr((os.environ.get("LD_PRELOAD"), os.environ.get("GLIBC_TUNABLES"), mapped, kib,
            sys.argv[1:])))
"""


def _child(choice: str = "auto") -> tuple:
  env = host_malloc.environment_choosing(os.environ, choice)
  out = subprocess.run([sys.executable, "-c", _CHILD, "arg1", "arg 2"], env=env,
                       capture_output=True, text=True, check=True).stdout
  return eval(out)  # noqa: S307 -- the repr of a tuple of literals printed by _CHILD


@NEEDS_TCMALLOC
def test_reexec_preloads_tcmalloc():
  preload, tunables, mapped, _, argv = _child()
  assert preload == TCMALLOC and tunables is None and mapped
  assert argv == ["arg1", "arg 2"]  # the same command line after the re-execution


@NEEDS_THP
def test_reexec_hugepages_takes_effect():
  preload, tunables, mapped, huge_kib, argv = _child("hugepages")
  assert preload is None and tunables == "glibc.malloc.hugetlb=1" and not mapped
  assert huge_kib >= 2048  # at least one 2 MiB page under the 64 MiB buffer
  assert argv == ["arg1", "arg 2"]


def test_turned_off():
  preload, tunables, mapped, huge_kib, _ = _child("off")
  assert preload is None and tunables is None and not mapped
  try:
    with open(host_malloc.THP_SETTING) as f:
      madvise_only = "[madvise]" in f.read()
  except OSError:
    madvise_only = False
  if madvise_only:  # without the tunable, malloc's memory is not madvised: no huge pages
    assert huge_kib == 0


@NEEDS_TCMALLOC
def test_module_runs_a_command_with_the_allocator():
  env = host_malloc.environment_choosing(os.environ, "auto")
  out = subprocess.run([sys.executable, "-m", "pnas_jax.host_malloc", "sh", "-c",
                        'echo "$LD_PRELOAD"'], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == TCMALLOC
