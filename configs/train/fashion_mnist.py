r"""Retrain a found network on Fashion-MNIST (the offline default; the demo's training budget).

  pnas train --config configs/train/fashion_mnist.py --workdir results/train_fmnist \
      --config.arch=results/search_fmnist/arch.json [--config.init=results/search_fmnist]
"""

from pnas_jax.train.train_config import train_config


def get_config(arg=None):
  del arg
  c = train_config()
  c.name = "fashion_mnist"
  c.data.name = "fashion_mnist"
  c.data.batch_size = 128
  c.data.eval_batch_size = 500
  c.model.dropout_rate = 0.1
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-5
  c.schedule.epochs = 2.0
  c.checkpoint.every_steps = 400
  c.log.every_steps = 50
  c.report.latency_batch = 32
  return c
