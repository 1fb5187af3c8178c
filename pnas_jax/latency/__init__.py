"""Hardware latency: timing on this device, lookup tables, predictors, expected latency."""
