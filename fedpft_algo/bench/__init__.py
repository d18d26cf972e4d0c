"""fedpft_algo.bench.runner."""
