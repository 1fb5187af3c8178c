r"""The paper's mobile search (Cai et al. 2019, Sec. 4.1): ImageNet, Pixel-1 latency table, T = 80 ms.

The Pixel-1 table is the reference implementation's mobile_trim.yaml (github.com/mit-han-lab/
proxylessnas); pass its path. ImageNet comes from TFDS (`tfds build imagenet2012
--manual_dir=DIR` once). 40 warm-up + 120 search epochs, batch 256 on 8 devices or more:

  pnas search --config configs/search/imagenet_mobile.py --workdir gs://bucket/search_mobile \
      --config.latency.model=/path/to/mobile_trim.yaml [--config.data.data_dir=...] [--multihost]
"""

from pnas_jax.train.search_config import search_config


def get_config(arg=None):
  del arg
  c = search_config()
  c.name = "imagenet_mobile"
  c.data.name = "tfds:imagenet2012"
  c.latency.model = "mobile_trim.yaml"
  c.latency.target = 80.0  # ms on a Pixel 1
  c.latency.loss = "mul#log"
  c.latency.loss_params = {"a": 0.2, "b": 0.3}
  c.arch.estimator = "two"
  c.checkpoint.every_steps = 2000
  return c
