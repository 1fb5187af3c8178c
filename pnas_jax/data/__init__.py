"""Data: image datasets by name, the class-balanced held-out split, augmentation, batching."""
