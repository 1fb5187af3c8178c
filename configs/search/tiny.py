r"""A seconds-long search for tests: synthetic 16x16 data, a 3-block space, MACs as the cost.

  pnas search --config configs/search/tiny.py --workdir /tmp/pnas_tiny
"""

from pnas_jax.train.search_config import search_config


def get_config(arg=None):
  del arg
  c = search_config()
  c.name = "tiny"
  c.space.stage_widths = (8, 16)
  c.space.stage_depths = (2, 1)
  c.space.stage_strides = (1, 2)
  c.space.candidates = ("3x3_MBConv3", "5x5_MBConv3", "3x3_MBConv6")
  c.space.stem_width = 8
  c.space.first_block_width = 8
  c.space.tail_width = 16
  c.space.n_classes = 10
  c.space.resolution = 16
  c.data.name = "synthetic"
  c.data.holdout = 256
  c.data.batch_size = 32
  c.data.arch_batch_size = 32
  c.data.eval_batch_size = 64
  c.model.dw_impl = "lax"
  c.schedule.warmup_epochs = 1.0
  c.schedule.epochs = 2.0
  c.schedule.steps_per_epoch = 6
  c.schedule.arch_every = 2
  c.schedule.arch_start_epoch = 0
  c.latency.model = "macs"
  c.latency.target_ratio = 0.8
  c.latency.loss = "add#linear"
  c.latency.loss_params = {"lam": 0.1}
  c.checkpoint.every_steps = 4
  c.checkpoint.keep = 3
  c.log.every_steps = 3
  c.log.progress = False
  c.log.plots = False
  return c
