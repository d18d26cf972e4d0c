"""The real FedPFT participant, except that client rank 1 raises inside ``FedPFTTrainer.train``
in the second round (after the server checkpointed the first).

Used by tests/test_fedml_integration.py to show that a failing client stops the whole run.
"""
import sys

import fedpft_algo.runtime.trainer as trainer
from fedpft_algo.runtime import participant


_real_train = trainer.FedPFTTrainer.train


def _broken_train(self, train_data, device, args):
    if self.round_idx >= 1:
        raise RuntimeError("injected failure inside train")
    return _real_train(self, train_data, device, args)


if __name__ == "__main__":
    rank = sys.argv[sys.argv.index("--rank") + 1] if "--rank" in sys.argv else None
    if rank is None:  # under mpirun: ask MPI
        from mpi4py import MPI

        rank = str(MPI.COMM_WORLD.Get_rank())
    if rank == "1":
        trainer.FedPFTTrainer.train = _broken_train
    sys.exit(participant.main())
