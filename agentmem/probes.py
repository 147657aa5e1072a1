"""What a session measures about its model and device: KV bytes per token, free memory."""

from __future__ import annotations

import time

import torch

from . import hf


def bytes_per_token(model, full_layers: int) -> float:
    """Bytes one more uncompacted token adds to the cache (keys and values of full layers)."""
    geometry = hf.kv_geometry(model)
    return float(full_layers * geometry.kv_heads * geometry.head_dim * 2 * next(model.parameters()).element_size())


class FreeMemory:
    """Free / total device memory, measured at most once per `every` seconds (stats() runs per token)."""

    def __init__(self, device: torch.device, every: float = 0.5):
        self.device, self.every = device, every
        self.value: float | None = None
        self.at = float("-inf")

    def fraction(self) -> float | None:
        now = time.monotonic()
        if now - self.at >= self.every:
            self.value, self.at = self._measure(), now
        return self.value

    def _measure(self) -> float | None:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return free / total
        try:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            return int(info["MemAvailable"].split()[0]) / int(info["MemTotal"].split()[0])
        except (OSError, KeyError, ValueError):
            return None
