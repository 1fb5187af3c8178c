"""Data parallelism: per-device steps with explicit collectives, mapped with jax.shard_map.

This is jax.pmap's SPMD model (which current JAX implements on top of shard_map): every device runs
the same step on its slice of the global batch; the step averages gradients, BN statistics and
metrics with lax.pmean over the 'data' axis (steps.py, axis_name="data"). The state is replicated
and identical on every device: the gate sample comes from the replicated state key, so all devices
train the same path; dropout and augmentation keys are folded with the device index.

BN statistics are synchronised across devices (layers.batch_norm_axis), so N devices compute what
one device computes on the same global batch (tests/test_parallel.py checks this with 4 fake CPU
devices). Multi-host: call jax.distributed.initialize() before anything touches a device (the
`pnas` CLI does it when --multihost or the cluster environment asks for it); the mesh then spans
every process's devices, each process feeds its own slice of the global batch (data/pipeline.py),
and `global_batch` assembles those slices into one global array without any cross-host copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pnas_jax.errors import UserValueError
from pnas_jax.layers.core import batch_norm_axis

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` global devices (None: all), axis 'data'."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise UserValueError(
          f"num_devices = {num_devices} but {len(devices)} device(s) are visible "
          f"({devices[0].platform}); use a value in [1, {len(devices)}] or None for all"
      )
    if jax.process_count() > 1 and num_devices != len(devices):
      raise UserValueError("num_devices must be None (all devices) in a multi-process run")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch(global_batch: int, mesh: Mesh, what: str = "batch") -> int:
  """The per-device batch; raises naming the sizes when the global batch does not divide."""
  n = mesh.devices.size
  if global_batch % n:
    raise UserValueError(
        f"{what} = {global_batch} is not divisible by the {n} devices of the mesh; use a multiple "
        f"of {n} (e.g. {max(n, global_batch // n * n)})"
    )
  return global_batch // n


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host/device pytree replicated on every device of the mesh (all processes alike).

  Every process must pass the same values. With several processes jax.device_put refuses a
  sharding over other processes' devices, so each process builds its local copies of the global
  array (make_array_from_callback); typed PRNG keys go through their raw key data.
  """
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
      x = x.addressable_data(0)  # assumed replicated (see to_host)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local: Any, mesh: Mesh) -> Any:
  """This process's slice of the batch (numpy) -> one global array sharded over 'data'.

  Asynchronous like device_put: the copy overlaps the running step (used by the prefetcher).
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def data_parallel(
    step_fn: Callable[..., Any],
    mesh: Mesh,
    *,
    sync_bn: bool = True,
    donate: bool = True,
    **collaborators: Any,
) -> Callable[..., Any]:
  """jit(shard_map(step_fn)) over `mesh`: state replicated in and out, batch split over 'data'.

  step_fn(state, batch, *, axis_name, **collaborators) -> (state, metrics) is one of the pure
  steps of steps.py (or anything with that signature); it must pmean what it returns.
  """
  fn = functools.partial(step_fn, axis_name=DATA_AXIS, **collaborators)

  def per_device(state, batch):
    with batch_norm_axis(DATA_AXIS if sync_bn else None):
      return fn(state, batch)

  mapped = jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()), check_vma=False
  )
  return jax.jit(mapped, donate_argnums=(0,) if donate else ())


def data_parallel_eval(
    eval_fn: Callable[..., Any], mesh: Mesh, **collaborators: Any
) -> Callable[..., Any]:
  """jit(shard_map(eval_fn)): eval_fn(variables, batch, *, axis_name) -> summed metrics (psum'd)."""
  fn = functools.partial(eval_fn, axis_name=DATA_AXIS, **collaborators)
  mapped = jax.shard_map(
      fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(), check_vma=False
  )
  return jax.jit(mapped)


def to_host(tree: Any) -> Any:
  """Replicated (or fully addressable) device arrays -> numpy, in every process.

  jax.device_get refuses arrays that span other processes' devices; a replicated array has a full
  copy on each local device, so its first addressable shard is the value.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x)) if isinstance(x, jax.Array) else x

  return jax.tree.map(one, tree)
