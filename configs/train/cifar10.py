r"""Retrain a found network on CIFAR-10 (32x32; the cifar-10-python.tar.gz tarball or tfds:cifar10).

  pnas train --config configs/train/cifar10.py --workdir results/train_cifar10 \
      --config.arch=results/search_cifar10/arch.json
"""

from pnas_jax.train.train_config import train_config


def get_config(arg=None):
  del arg
  c = train_config()
  c.name = "cifar10"
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.model.dropout_rate = 0.2
  c.optim.lr = 0.05
  c.optim.weight_decay = 5e-4
  c.schedule.epochs = 200.0
  c.checkpoint.every_steps = 1000
  return c
