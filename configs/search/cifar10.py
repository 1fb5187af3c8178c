r"""CIFAR-10 search (32x32): the ImageNet space's layout at width 0.5 with stride-1 early stages.

Data: the cifar-10-python.tar.gz tarball (--config.data.data_dir=DIR or ~/data), or
--config.data.name=tfds:cifar10. Latency: a table measured on this device before the search.

  pnas search --config configs/search/cifar10.py --workdir results/search_cifar10
"""

from pnas_jax.train.search_config import search_config


def get_config(arg=None):
  del arg
  c = search_config()
  c.name = "cifar10"
  c.space.stage_widths = (24, 40, 80, 96, 192, 320)
  c.space.stage_depths = (2, 3, 3, 3, 3, 1)
  c.space.stage_strides = (1, 2, 2, 1, 2, 1)
  c.space.stem_stride = 1
  c.space.width_mult = 0.5
  c.space.n_classes = 10
  c.space.resolution = 32
  c.data.name = "cifar10"
  c.data.holdout = 5000
  c.data.batch_size = 128
  c.data.arch_batch_size = 128
  c.schedule.warmup_epochs = 10.0
  c.schedule.epochs = 30.0
  c.latency.model = "measure"
  c.latency.n_networks = 40
  c.latency.target_ratio = 0.7
  c.latency.loss = "add#linear"
  c.latency.loss_params = {"lam": 0.1}
  c.checkpoint.every_steps = 500
  return c
