"""Triton's system shared-memory extension: clients on the same node register POSIX shared-memory
objects (``shm_open`` keys, ``/dev/shm/<key>``) and name them in requests instead of sending tensors.

Inputs are read from a region (one copy, into the request's arrays); outputs are written into a region
and the response carries no data for them. CUDA shared memory has no device here: registering it is
a 400 saying so.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from continuum_worker.errors import InvalidArgument, NotFound

SHM_ROOT = Path("/dev/shm")
CUDA_UNSUPPORTED = "CUDA shared memory is not supported on this build (CPU only, no GPU)"


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> dict[str, object]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def _span(self, offset: int, size: int, what: str) -> int:
        if offset < 0 or size < 0 or offset + size > self.byte_size:
            raise InvalidArgument(
                f"{what}: {size} bytes at offset {offset} do not fit shared memory region '{self.name}' "
                f"of {self.byte_size} bytes"
            )
        return self.offset + offset

    def read(self, offset: int, size: int, what: str) -> bytes:
        start = self._span(offset, size, what)
        return bytes(self.mapping[start : start + size])

    def write(self, offset: int, data: bytes, capacity: int, what: str) -> None:
        if len(data) > capacity:
            raise InvalidArgument(
                f"{what}: {len(data)} bytes do not fit the {capacity} bytes given in shared memory region "
                f"'{self.name}'"
            )
        start = self._span(offset, len(data), what)
        self.mapping[start : start + len(data)] = data


class SharedMemoryRegistry:
    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name or not key:
            raise InvalidArgument("registering shared memory needs a 'name' and a 'key'")
        if name in self.regions:
            raise InvalidArgument(f"shared memory region '{name}' already in manager")
        if offset < 0 or byte_size <= 0:
            raise InvalidArgument("shared memory 'offset' must be >= 0 and 'byte_size' > 0")
        path = SHM_ROOT / key.lstrip("/")
        if "/" in key.lstrip("/") or not key.lstrip("/"):
            raise InvalidArgument(f"shared memory key '{key}' is not a POSIX shared-memory name")
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise InvalidArgument(f"Unable to open shared memory region: '{key}': {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidArgument(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} exceed the "
                    f"{size} bytes of '{key}'"
                )
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str | None = None) -> None:
        """One region, or every region when ``name`` is empty (as Triton's unregister-all)."""
        names = [name] if name else list(self.regions)
        for n in names:
            region = self.regions.pop(n, None)
            if region is not None:
                region.mapping.close()

    def status(self, name: str | None = None) -> list[dict[str, object]]:
        if name:
            if name not in self.regions:
                raise NotFound(f"Unable to find system shared memory region: '{name}'")
            return [self.regions[name].status()]
        return [r.status() for r in self.regions.values()]

    def get(self, name: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            raise InvalidArgument(f"Unable to find shared memory region: '{name}'")
        return region

    def close(self) -> None:
        self.unregister()
