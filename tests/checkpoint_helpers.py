"""Reading a run's checkpoints back in tests, as raw trees (no template state needed)."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


def saved_state(workdir: str, step: int) -> Any:
  """The state saved at `step` in WORKDIR/checkpoints, as orbax restores it without a template."""
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  try:
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    mngr.close()
