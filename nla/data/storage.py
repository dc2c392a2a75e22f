"""Atomic file writes and the on-disk encoding of activation vectors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from nla.core.files import atomic_write, atomic_write_bytes

__all__ = ["STORE_DTYPES", "atomic_save_npy", "atomic_write_bytes", "atomic_write_json", "decode_vectors",
           "encode_vectors", "file_sha256"]

# float16 is deliberately absent: Gemma residual norms reach 6e4-8e4, beyond its range.
STORE_DTYPES = ("float32", "bfloat16")


def atomic_write_json(path: Path, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


class _Writes:
    """A stream that offers numpy only ``write``: numpy then writes through it in chunks instead of with
    ``tofile``, whose short write (a full disk, a file-size limit) is a bare "N requested and M
    written" with no error number; through ``write`` it is an OSError that says which."""

    def __init__(self, stream) -> None:
        self.write = stream.write


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda stream: np.save(_Writes(stream), array, allow_pickle=False))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_vectors(vectors: torch.Tensor, store_dtype: str) -> np.ndarray:
    """float32 as is; bfloat16 as its raw 16 bits in uint16, since numpy has no bfloat16."""
    if store_dtype == "float32":
        return vectors.detach().to(torch.float32).cpu().numpy()
    if store_dtype == "bfloat16":
        return vectors.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    raise ValueError(f"unknown store dtype {store_dtype!r}; use one of {STORE_DTYPES}")


def decode_vectors(array: np.ndarray, store_dtype: str) -> torch.Tensor:
    """Stored rows back to a float32 tensor (a copy: memory maps are read-only)."""
    if store_dtype == "float32":
        return torch.from_numpy(np.array(array, dtype=np.float32))
    if store_dtype == "bfloat16":
        return torch.from_numpy(np.array(array, dtype=np.uint16).view(np.int16)).view(torch.bfloat16).to(torch.float32)
    raise ValueError(f"unknown store dtype {store_dtype!r}; use one of {STORE_DTYPES}")
