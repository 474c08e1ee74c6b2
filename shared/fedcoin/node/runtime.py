"""What every service does first: logging, torch threads, its state directory and key."""

from __future__ import annotations

import torch

from fedcoin.chain.identity import Identity

from .logs import configure_logging
from .settings import NodeSettings


def start_node(settings: NodeSettings) -> Identity:
    """Configure the process from ``settings`` and return the node's key (created if absent)."""
    configure_logging(settings.log_level, settings.log_format)
    torch.set_num_threads(settings.torch_threads)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return Identity.load_or_create(settings.key_path)
