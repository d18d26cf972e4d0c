"""GRPC address files: one row per rank, ``eid,rank,grpc_server_ip,grpc_server_port`` (FedML's format).

Every participant listens on its own row's address, so before a local run starts each address
must be bindable here; without an address file the launcher takes free loopback ports.
"""
from __future__ import annotations

import csv
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import ConfigError

ADDRESS_HEADER = ["eid", "rank", "grpc_server_ip", "grpc_server_port"]


@dataclass(frozen=True)
class Address:
    rank: int
    ip: str
    port: int


def plan_addresses(given: Optional[str], num_clients: int) -> List[Address]:
    """Ranks 0..N from the address file ``given`` (or free loopback ports), each checked bindable here."""
    addresses = read_address_file(Path(given), num_clients) if given else free_loopback_addresses(num_clients + 1)
    check_ports_free(addresses, Path(given) if given else None)
    return addresses


def read_address_file(path: Path, num_clients: int) -> List[Address]:
    """Parse a FedML GRPC address file: header ``eid,rank,grpc_server_ip,grpc_server_port``, ranks 0..N."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"GRPC address file {path} cannot be read: {exc.strerror}") from None
    rows = list(csv.reader(lines))
    if not rows or [c.strip() for c in rows[0]] != ADDRESS_HEADER:
        raise ConfigError(f"GRPC address file {path} line 1: expected the header {','.join(ADDRESS_HEADER)}")
    addresses: Dict[int, Address] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        cells = [c.strip() for c in row]
        try:
            eid, rank, ip, port = cells[0], int(cells[1]), cells[2], int(cells[3])
            if len(cells) != 4 or int(eid) != rank or not ip or not 1 <= port <= 65535:
                raise ValueError
        except (ValueError, IndexError):
            raise ConfigError(f"GRPC address file {path} line {lineno}: {','.join(row)!r} is not allowed: expected "
                              f"EID,RANK,IP,PORT with EID = RANK and a port in 1..65535") from None
        if rank in addresses or not 0 <= rank <= num_clients:
            raise ConfigError(f"GRPC address file {path} line {lineno}: rank {rank} is "
                              f"{'repeated' if rank in addresses else 'out of range'}: expected one row per "
                              f"rank 0..{num_clients} (client_num_per_round={num_clients})")
        addresses[rank] = Address(rank, ip, port)
    missing = sorted(set(range(num_clients + 1)) - set(addresses))
    if missing:
        raise ConfigError(f"GRPC address file {path}: no row for rank(s) {missing}: expected one row per "
                          f"rank 0..{num_clients} (client_num_per_round={num_clients})")
    return [addresses[r] for r in range(num_clients + 1)]


def write_address_file(path: os.PathLike, addresses: Sequence[Address]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(ADDRESS_HEADER)
        for a in addresses:
            writer.writerow([a.rank, a.rank, a.ip, a.port])


def free_loopback_addresses(count: int, ip: str = "127.0.0.1") -> List[Address]:
    """``count`` distinct ports that are free on ``ip`` right now (ranks 0..count-1)."""
    sockets = []
    try:
        for _ in range(count):   # hold all open at once so the kernel hands out distinct ports
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ip, 0))
            sockets.append(s)
        return [Address(rank, ip, s.getsockname()[1]) for rank, s in enumerate(sockets)]
    finally:
        for s in sockets:
            s.close()


def check_ports_free(addresses: Sequence[Address], source: Optional[Path]) -> None:
    """Every participant listens on its own row's address: each must be bindable on this machine."""
    for a in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # ignore TIME_WAIT, like gRPC does
            try:
                s.bind((a.ip, a.port))
            except OSError as exc:
                what = (f"port in use: {a.ip}:{a.port}" if exc.errno == errno.EADDRINUSE
                        else f"cannot listen on {a.ip}:{a.port} ({exc.strerror}; every participant runs here)")
                raise ConfigError(f"GRPC address file {source or '(generated)'}, rank {a.rank}: {what}; "
                                  f"stop what uses it or choose another port") from None
