"""fedpft_algo.rundir."""
