"""Where a model runs: the one place device names are checked.

fedxray runs on the CPU, on an NVIDIA GPU (``cuda``, ``cuda:N``) or on Apple's GPU (``mps``).
A name torch does not know (``tpu``), or a device this machine lacks (``cuda`` without a GPU or
driver), is a FedxrayError naming the device, before any work.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fedxray.errors import FedxrayError

if TYPE_CHECKING:
    import torch

KNOWN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
CHOICES = "cpu, cuda, cuda:N or mps"


def check_device_name(device: str) -> str:
    """``device`` when it names a kind of device fedxray can run on (not whether it is here)."""
    if not isinstance(device, str) or not KNOWN.match(device.strip().lower()):
        raise FedxrayError(f"unknown device {device!r}", hint=f"use {CHOICES}")
    return device.strip().lower()


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device that exists on this machine, or a FedxrayError saying what to use."""
    import torch  # late: `fedxray --help` and the option check start without torch

    name = str(device) if isinstance(device, torch.device) else check_device_name(device)
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FedxrayError(
                f"device {name} is not available: this machine has no usable NVIDIA GPU "
                "(or no driver for it)",
                hint="run on the CPU",
                option="device",
                value="cpu",
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise FedxrayError(
                f"device {name} is not available: this machine has {count} GPU(s), "
                f"cuda:0 to cuda:{count - 1}",
                option="device",
                value="cuda:0",
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FedxrayError(
            f"device {name} is not available on this machine",
            hint="run on the CPU",
            option="device",
            value="cpu",
        )
    return dev
