"""What every service does first: logging, torch threads, its state directory and key."""

from __future__ import annotations

import logging

import torch

from fedcoin.chain.identity import Identity

from .settings import NodeSettings


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def start_node(settings: NodeSettings) -> Identity:
    """Configure the process from ``settings`` and return the node's key (created if absent)."""
    configure_logging(settings.log_level)
    torch.set_num_threads(settings.torch_threads)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return Identity.load_or_create(settings.key_path)
