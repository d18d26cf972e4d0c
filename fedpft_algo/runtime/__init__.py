"""fedpft_algo.runtime."""
