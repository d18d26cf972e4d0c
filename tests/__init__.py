"""FedPFT's test suite; folders mirror ``fedpft_algo/`` (see README's "Tests")."""
