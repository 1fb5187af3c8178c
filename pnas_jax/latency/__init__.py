"""Hardware latency: timing on this device, lookup tables, predictors, expected latency, losses.

  timing.py     time_fn / time_interleaved: jitted calls, warm-up, block_until_ready, median
  table.py      LatencyTable (our JSON + the reference YAML), keys, header checks, cost_table()
  measure.py    measure_table / measure_networks on the device JAX runs on (resumable)
  expected.py   CostTable, expected_cost: E[cost] = fixed + sum_l <p_l, c_l>
  predictor.py  differentiable predictors (table_sum, linear), fitting, load_latency_model()
  loss.py       latency_loss("mul#log" | "add#linear")
  cli.py        `pnas latency measure | fit | expected`
"""
