r"""Retrain on ImageNet with the paper's recipe (Cai et al. 2019, Sec. 4.1): 300 epochs, SGD Nesterov
0.9, cosine from 0.05 at batch 256 (scale lr with the batch), weight decay 4e-5 not on BN, label
smoothing 0.1, dropout 0.1 (mobile; use 0.2 for cpu, 0.3 for gpu / mobile_14).

  pnas train --config configs/train/imagenet.py --workdir results/train_mobile \
      --config.arch=results/search_mobile/arch.json     # or a zoo name: proxyless_mobile
"""

from pnas_jax.train.train_config import train_config


def get_config(arg=None):
  del arg
  c = train_config()
  c.name = "imagenet"
  c.data.name = "tfds:imagenet2012"
  c.resolution = 224
  c.data.batch_size = 256
  c.model.dropout_rate = 0.1
  c.optim.lr = 0.05
  c.optim.ema_decay = 0.0
  c.schedule.epochs = 300.0
  c.checkpoint.every_steps = 5000
  return c
