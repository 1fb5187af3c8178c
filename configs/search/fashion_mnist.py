r"""The offline default: search on Fashion-MNIST for this machine's CPU, in minutes on 2 cores.

Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist; `apt-get install
dataset-fashion-mnist`), or --config.data.name=tfds:fashion_mnist. Latency: a table and a few whole
networks measured here first (single-threaded, CPU-time clock; cached in WORKDIR/latency), target
0.7 x the latency of the hand-designed baseline (every block 3x3_MBConv6, like MobileNetV2).

  pnas search --config configs/search/fashion_mnist.py --workdir results/search_fmnist
"""

from pnas_jax.train.search_config import search_config


def get_config(arg=None):
  del arg
  c = search_config()
  c.name = "fashion_mnist"
  # 28x28x1 -> stem stride 2 -> 14x14; 7 searchable blocks, widths sized for a 2-core CPU.
  c.space.stage_widths = (16, 24, 32, 48)
  c.space.stage_depths = (2, 2, 2, 1)
  c.space.stage_strides = (1, 2, 1, 2)
  c.space.stem_width = 16
  c.space.first_block_width = 16
  c.space.tail_width = 256
  c.space.n_classes = 10
  c.space.resolution = 28
  c.space.in_channels = 1
  c.data.name = "fashion_mnist"
  c.data.holdout = 5000
  c.data.batch_size = 128
  c.data.arch_batch_size = 128
  c.data.eval_batch_size = 500
  c.schedule.warmup_epochs = 1.0
  c.schedule.epochs = 2.0
  # Minutes instead of the paper's 160 epochs: arch steps every 3 weight steps from the first search
  # epoch, with a larger Adam step on alpha (the paper's 1e-3 would barely move it in 286 steps).
  c.schedule.arch_every = 3
  c.schedule.arch_start_epoch = 0
  c.optim.warmup_lr = 0.1
  c.optim.lr = 0.05
  c.optim.arch_lr = 0.03
  c.latency.model = "measure"
  c.latency.n_networks = 24
  c.latency.repeats = 40
  c.latency.target_ratio = 0.7
  c.latency.loss = "add#linear"  # latencies here are ~1 ms: mul#log needs T > 1
  c.latency.loss_params = {"lam": 0.5}
  c.checkpoint.every_steps = 200
  c.log.every_steps = 25
  return c
