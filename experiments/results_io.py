"""How every experiment script ends: the JSON under results/, its plot beside it, the JSON on stdout.

Not a benchmark itself; the scripts import it from their own directory (python puts the script's
directory first on sys.path).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any


def write_result(result: dict[str, Any], out: str | pathlib.Path, as_json: bool,
                 plot: Callable[[dict[str, Any], pathlib.Path], None] | None = None) -> None:
  """Writes `out` (indented JSON) and, given `plot`, `out` with .png; prints the result (one line
  with as_json: the last line of the output is the result)."""
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  if plot is not None:
    plot(result, out.with_suffix(".png"))
  print(json.dumps(result) if as_json else json.dumps(result, indent=2))


def save_figure(fig: Any, device: str, path: str | pathlib.Path, dpi: int = 120) -> None:
  """The device as the figure's title, a tight layout, `path` at `dpi`; closes the figure."""
  import matplotlib.pyplot as plt

  fig.suptitle(device, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
