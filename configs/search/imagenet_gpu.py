r"""GPU-targeted ImageNet search (Cai et al. 2019, Table 3): latency measured on the target GPU.

Measure the table on the GPU you target first (batch 8, wall clock), then search under T = 5.1 ms
(the published proxyless_gpu's V100 latency; set your own):

  pnas latency measure --config configs/latency/imagenet.py --config.batch=8 \
      --config.clock=wall --config.table=results/latency/gpu_table.json --config.n_networks=0
  pnas search --config configs/search/imagenet_gpu.py --workdir results/search_gpu
"""

from pnas_jax.train.search_config import search_config


def get_config(arg=None):
  del arg
  c = search_config()
  c.name = "imagenet_gpu"
  c.data.name = "tfds:imagenet2012"
  c.latency.model = "results/latency/gpu_table.json"
  c.latency.batch = 8
  c.latency.clock = "wall"
  c.latency.check_device = True  # the table must come from this kind of GPU
  c.latency.target = 5.1
  c.latency.loss = "mul#log"
  c.latency.loss_params = {"a": 0.2, "b": 0.3}
  c.arch.estimator = "two"
  c.checkpoint.every_steps = 2000
  return c
