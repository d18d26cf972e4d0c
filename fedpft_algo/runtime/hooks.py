"""Making every FedML 0.9.6 path call the FedPFT hooks.

* MPI simulation: FedML's ``FedAVGAggregator.aggregate`` averages by itself and never calls the
  ``ServerAggregator``'s ``on_before_aggregation / aggregate / on_after_aggregation``, and its
  ``FedAVGTrainer`` never tells the ``ClientTrainer`` which client it plays.
  :func:`install_mpi_simulation_hooks` swaps in subclasses that do (FedML looks the classes up
  in ``FedAvgAPI``'s module namespace when the processes start).
* cross-silo (MPI and GRPC): FedML calls all hooks itself; nothing to patch.
* single process (``sp``): FedML's ``SimulatorSingleProcess`` ignores custom trainers and
  aggregators, so :class:`SingleProcessFlow` runs the same FedML objects in-process and is
  handed to ``FedMLRunner`` as ``algorithm_flow``.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ..compat import load_fedml
from .last_round import install_last_round_finish

logger = logging.getLogger(__name__)


def install_mpi_simulation_hooks(round_offset: int = 0) -> None:
    """Swap FedML's MPI-simulation aggregator and trainer wrapper for the hooked ones below.

    ``round_offset``: rounds done before this process started (a resumed run,
    :attr:`fedpft_algo.settings.RunSettings.round_offset`); FedML counts the rounds of this process.
    """
    load_fedml()
    from fedml.simulation.mpi.fedavg import FedAvgAPI
    from fedml.simulation.mpi.fedavg.FedAVGAggregator import FedAVGAggregator

    install_last_round_finish(FedAvgAPI)  # clients end a run whose only (or last remaining) round is round 0
    if getattr(FedAvgAPI.FedAVGAggregator, "_fedpft_hooked", False):
        FedAvgAPI.FedAVGAggregator.round_offset = round_offset
        return

    class HookedFedAVGAggregator(FedAVGAggregator):
        """FedML's MPI-simulation aggregator, calling the ServerAggregator's three hooks."""

        _fedpft_hooked = True
        round_offset = 0

        def aggregate(self):
            start = time.time()
            uploads = [(self.sample_num_dict[idx], self.model_dict[idx]) for idx in range(self.worker_num)]
            uploads, _ = self.aggregator.on_before_aggregation(uploads)
            averaged = self.aggregator.aggregate(uploads)
            payload = self.aggregator.on_after_aggregation(averaged)
            self.set_global_model_params(payload)
            logger.info("aggregate (with FedPFT hooks) took %.1fs", time.time() - start)
            return payload

        def client_sampling(self, round_idx, client_num_in_total, client_num_per_round):
            # FedML counts the rounds of this process; a resumed run continues the run's count
            return sample_clients(round_idx + self.round_offset, client_num_in_total, client_num_per_round)

    class IndexedFedAVGTrainer(FedAvgAPI.FedAVGTrainer):
        """FedML's MPI-simulation client wrapper, telling the ClientTrainer which client it plays.

        FedML switches a process between clients with ``update_dataset(client_index)`` but never calls
        ``set_id``, so every client of a round would draw the same per-client seed (data order,
        dropout, DP noise).
        """

        def update_dataset(self, client_index):
            super().update_dataset(client_index)
            self.trainer.set_id(int(client_index))

    HookedFedAVGAggregator.round_offset = round_offset
    FedAvgAPI.FedAVGAggregator = HookedFedAVGAggregator
    FedAvgAPI.FedAVGTrainer = IndexedFedAVGTrainer


def sample_clients(round_idx: int, client_num_in_total: int, client_num_per_round: int):
    """FedML's own client sampling rule (seeded by the round), so all backends pick alike."""
    if client_num_in_total == client_num_per_round:
        return list(range(client_num_in_total))
    np.random.seed(round_idx)
    return [int(i) for i in np.random.choice(range(client_num_in_total), client_num_per_round, replace=False)]


class SingleProcessFlow:
    """FedML's round structure in one process, for FedML's ``sp`` backend (fast benchmarks)."""

    def __init__(self, args, device, dataset, trainer, aggregator, runlog, settings):
        self.args, self.device, self.dataset = args, device, dataset
        self.trainer, self.aggregator, self.runlog = trainer, aggregator, runlog
        self.settings = settings

    def run(self):
        _, _, _, _, train_num_dict, train_local_dict, _, _ = self.dataset
        settings = self.settings
        payload = self.aggregator.get_model_params()
        for round_idx in settings.rounds:   # a resumed run starts after its checkpoint's rounds
            self.runlog.status("training", round_idx)
            uploads = []
            for client_index in sample_clients(round_idx, settings.client_num_in_total, settings.client_num_per_round):
                self.trainer.set_id(client_index)
                self.trainer.set_model_params(payload)
                self.trainer.on_before_local_training(train_local_dict[client_index], self.device, self.args)
                self.trainer.train(train_local_dict[client_index], self.device, self.args)
                self.trainer.on_after_local_training(train_local_dict[client_index], self.device, self.args)
                uploads.append((train_num_dict[client_index], self.trainer.get_model_params()))
            uploads, _ = self.aggregator.on_before_aggregation(uploads)
            payload = self.aggregator.on_after_aggregation(self.aggregator.aggregate(uploads))
            self.aggregator.set_model_params(payload)
            self.aggregator.test_all(None, None, self.device, self.args)
        return self.aggregator.history
