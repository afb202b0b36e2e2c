"""The paged KV pools: one K and one V tensor per layer, [num_blocks, block_size, n_kv_heads, head_dim]."""

from __future__ import annotations

import torch


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new pool on `device` now: CUDA's free memory, or MemAvailable on a Linux CPU (None when
    it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class KVCache:
    """Per-layer paged K/V pools. Slot s of a layer lives at pool.view(-1, n_kv, d)[s]."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_blocks, block_size, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.k, self.v))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def read_blocks(self, block_ids: list[int]) -> torch.Tensor:
        """The K and V of `block_ids` in every layer, as one new tensor [layers, 2, len(ids), block, heads, dim]
        (what a KV transfer sends)."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.k[0].device)
        return torch.stack([torch.stack((k.index_select(0, index), v.index_select(0, index)))
                            for k, v in zip(self.k, self.v)])

    def write_blocks(self, block_ids: list[int], data: torch.Tensor) -> None:
        """Store what read_blocks returned (of another pool with the same shape per block) into `block_ids`."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.k[0].device)
        data = data.to(self.k[0].device)
        for layer, (k, v) in enumerate(zip(self.k, self.v)):
            k.index_copy_(0, index, data[layer, 0])
            v.index_copy_(0, index, data[layer, 1])

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * n_kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()
