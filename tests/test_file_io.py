"""file_io: user files that cannot be read become UserFileError naming the file (a directory, a binary
file, no permission, invalid JSON, a truncated or foreign msgpack file); writes are atomic."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pnas_jax import file_io
from pnas_jax.errors import PnasError, UserFileError
from pnas_jax.search_space import io as ss_io
from pnas_jax.search_space.space import SearchSpaceError


def test_read_text_errors_name_the_file(tmp_path):
  with pytest.raises(UserFileError, match=r"nope.txt: no such arch file"):
    file_io.read_text(tmp_path / "nope.txt", "arch file")
  with pytest.raises(UserFileError, match=r"is a directory, not a arch file"):
    file_io.read_text(tmp_path, "arch file")
  binary = tmp_path / "bin.json"
  binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
  with pytest.raises(UserFileError, match=r"bin.json: not a text file \(byte 0x89 at offset 0"):
    file_io.read_text(binary)


def test_unreadable_file(tmp_path, monkeypatch):
  p = tmp_path / "secret.json"
  p.write_text("{}")
  p.chmod(0)
  if os.geteuid() == 0:  # root reads any file: make open() refuse as it would for a user.
    def refuse(path, *args, **kwargs):
      raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(file_io, "open", refuse, raising=False)
  with pytest.raises(UserFileError, match=r"secret.json: permission denied"):
    file_io.read_json(p)


def test_read_json_corrupt_names_file_line_and_fix(tmp_path):
  p = tmp_path / "config.json"
  p.write_text('{"a": 1,\n "b": "x\ty"}')  # a raw tab in a string: "Invalid control character"
  with pytest.raises(UserFileError) as e:
    file_io.read_json(p)
  msg = str(e.value)
  assert str(p) in msg and "line 2" in msg and "Invalid control character" in msg
  assert "delete it" in msg
  assert isinstance(e.value, PnasError) and isinstance(e.value, OSError)


def test_write_json_is_atomic_and_round_trips(tmp_path):
  p = tmp_path / "x.json"
  file_io.write_json(p, {"a": [1, 2]})
  assert file_io.read_json(p) == {"a": [1, 2]}
  assert os.listdir(tmp_path) == ["x.json"]  # no temporary left behind


def test_msgpack_round_trip_truncated_and_foreign(tmp_path):
  tree = {"params": {"w": np.arange(1000, dtype=np.float32), "b": np.zeros(3, np.float32)}}
  p = tmp_path / "weights.msgpack"
  file_io.save_msgpack(p, tree)
  back = file_io.load_msgpack(p, tree)
  np.testing.assert_array_equal(back["params"]["w"], tree["params"]["w"])
  data = p.read_bytes()
  p.write_bytes(data[: len(data) // 2])
  with pytest.raises(UserFileError, match=r"weights.msgpack: the weights file is truncated or corrupt"
                     r" \(.*incomplete input.*delete it"):
    file_io.load_msgpack(p, tree)
  p.write_bytes(data)
  other = {"params": {"w": np.zeros(10, np.float32), "c": np.zeros(3, np.float32)}}
  with pytest.raises(UserFileError, match=r"does not match.*missing in the file: \['params/c'\].*"
                     r"shape differences: \['params/w: file \(1000,\) vs expected \(10,\)'\]"):
    file_io.load_msgpack(p, other)
  with pytest.raises(UserFileError, match="no such weights file"):
    file_io.load_msgpack(tmp_path / "none.msgpack", tree)


def test_arch_file_directory_binary_are_clean_errors(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "arch.json").write_text("{}")
  with pytest.raises(SearchSpaceError, match=r"run: is a directory.*did you mean .*run/arch.json"):
    ss_io.load_arch(tmp_path / "run")
  binary = tmp_path / "weights.msgpack"
  binary.write_bytes(b"\x82\xa6params\xc4\x10" + bytes(range(200, 256)))
  with pytest.raises(SearchSpaceError, match=r"weights.msgpack: not a text arch file"):
    ss_io.load_arch(binary)
  with pytest.raises(SearchSpaceError, match=r"weights.msgpack: not a text arch file"):
    ss_io.read_arch_meta(binary)


def test_arch_show_directory_exits_2(tmp_path, capsys):
  from pnas_jax import cli

  assert cli.main(["arch", "show", str(tmp_path)]) == 2
  assert "is a directory" in capsys.readouterr().err


def test_arch_show_binary_file_exits_2(tmp_path, capsys):
  from pnas_jax import cli

  p = tmp_path / "weights.msgpack"
  p.write_bytes(b"\x82\xa6params\xc4\x10" + bytes(range(128, 256)))
  assert cli.main(["arch", "show", str(p)]) == 2
  err = capsys.readouterr().err
  assert "weights.msgpack: not a text arch file" in err and "Traceback" not in err
