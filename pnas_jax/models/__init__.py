"""Networks for a fixed architecture: the ChildNet, the published model zoo, cost counting, init."""
