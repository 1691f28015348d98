"""Meta-training learned optimisers, their checkpoints, and the cache that reuses them."""
