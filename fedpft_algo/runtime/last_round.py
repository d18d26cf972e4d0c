"""Ending FedML 0.9.6's MPI simulation after a one-round run.

In ``fedml.simulation.mpi.fedavg`` a client process finishes only when it receives a model with
``round_idx == comm_round - 1`` (``FedAVGClientManager.handle_message_receive_model_from_server``).
Round 0 arrives through ``handle_message_init``, which trains and never finishes: when round 0 is
also the last round (``comm_round: 1``, or a resumed run with one round left) the server finishes
after aggregating it, and every client waits for a model that never comes.

:func:`install_last_round_finish` swaps in a client manager that finishes after the init round when
that round is the last, exactly as FedML's own manager finishes after any later last round. The
server side needs nothing: it already finishes when ``round_idx`` reaches ``comm_round``.
Cross-silo (MPI and GRPC) ends one-round runs by itself (measured: the server sends its finish
message after the last round, whichever it is).
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def install_last_round_finish(fedavg_api) -> None:
    """Replace ``fedavg_api.FedAVGClientManager`` (FedML looks it up there when a client starts)."""
    manager = fedavg_api.FedAVGClientManager
    if getattr(manager, "_fedpft_finishes_round_0", False):
        return

    class FinishingFedAVGClientManager(manager):
        """FedML's MPI-simulation client manager, which also finishes when round 0 is the last round."""

        _fedpft_finishes_round_0 = True

        def handle_message_init(self, msg_params):
            super().handle_message_init(msg_params)  # trains round 0 and sends the upload
            if self.num_rounds <= 1:
                logger.info("round 0 was the last round: client finishes")
                self.finish()

    fedavg_api.FedAVGClientManager = FinishingFedAVGClientManager
