"""fedpft_algo.methods."""
