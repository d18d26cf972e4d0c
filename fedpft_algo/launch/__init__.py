"""fedpft_algo.launch."""
