r"""CPU-targeted ImageNet search (Cai et al. 2019, Table 3): a predictor measured on the target CPU.

Measure the table and whole networks on the target CPU, fit the predictor, then search under
T = 138.7 ms (the published proxyless_cpu's Xeon latency; set your own):

  pnas latency measure --config configs/latency/imagenet.py
  pnas latency fit --config configs/latency/imagenet.py
  pnas search --config configs/search/imagenet_cpu.py --workdir results/search_cpu \
      --config.latency.model=results/latency/imagenet_predictor.json
"""

from pnas_jax.train.search_config import search_config


def get_config(arg=None):
  del arg
  c = search_config()
  c.name = "imagenet_cpu"
  c.data.name = "tfds:imagenet2012"
  c.latency.model = "results/latency/imagenet_predictor.json"
  c.latency.check_device = True
  c.latency.target = 138.7
  c.latency.loss = "mul#log"
  c.latency.loss_params = {"a": 0.2, "b": 0.3}
  c.arch.estimator = "two"
  c.checkpoint.every_steps = 2000
  return c
