"""One BPF ring buffer read through its map's fd, in whichever process holds
the fd: libbpf's reader of that ring alone (BCC's reads every ring its
module opened at once), and how many bytes wait in it, read from the ring's
own shared pages."""

from __future__ import annotations

import ctypes as ct
import mmap
import struct
from typing import Any


class Ring:
    def __init__(self, fd: int) -> None:
        from bcc import libbcc

        self._lib = libbcc.lib
        self.pending: list[bytes] = []  # records copied out, not yet taken
        self._limit: int | None = None
        self._cb = libbcc._RINGBUF_CB_TYPE(self._copy)  # kept alive while the reader may call it
        self._reader: Any = self._lib.bpf_new_ringbuf(fd, self._cb, None)
        if not self._reader:
            raise OSError(f"cannot read the ring buffer of map fd {fd}")
        # the kernel's consumer and producer positions, a page each; the data follows
        self._positions = [mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset)
                           for offset in (0, mmap.PAGESIZE)]

    def _copy(self, _ctx: Any, data: int, size: int) -> int:
        # Copy only: the faster records leave the ring buffer, the fewer are lost.
        self.pending.append(ct.string_at(data, size))
        return -1 if self._limit is not None and len(self.pending) >= self._limit else 0  # -1: stop here

    def wait(self, timeout_ms: int) -> bool:
        """Wait up to timeout_ms for a record sent with a wakeup; True if
        records are then pending (everything the ring held is)."""
        self._lib.bpf_poll_ringbuf(self._reader, timeout_ms)
        return bool(self.pending)

    def fetch(self, limit: int | None = None) -> int:
        """Copy records out, without waiting: everything, or until `limit`
        are pending. Returns how many are pending."""
        self._limit = limit
        try:
            self._lib.bpf_consume_ringbuf(self._reader)
        finally:
            self._limit = None
        return len(self.pending)

    def take(self, limit: int | None = None) -> list[bytes]:
        """The records pending after a fetch: all of them, or about `limit`."""
        self.fetch(limit)
        records, self.pending = self.pending, []
        return records

    def backlog(self) -> int:
        """Bytes sent that no reader of this ring has consumed yet."""
        consumer, producer = (struct.unpack_from("<Q", page)[0] for page in self._positions)
        return max(producer - consumer, 0)

    def close(self) -> None:
        if self._reader:
            self._lib.bpf_free_ringbuf(self._reader)
            self._reader = None
        for page in self._positions:
            page.close()
