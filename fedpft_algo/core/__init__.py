"""fedpft_algo.core."""
