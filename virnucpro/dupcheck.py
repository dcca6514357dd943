"""Duplicate record ids found in bounded memory (no torch).

Each id is reduced to a 64-bit hash kept with its record's byte offset (16 bytes a
record).  Up to ``buffer_entries`` pairs stay in memory; beyond that they are spilled
to ``BUCKETS`` bucket files by the hash's top byte, and each bucket is sorted on its
own at the end, so memory stays bounded whatever the number of records.  Equal hashes
are only candidates: the caller confirms them exactly by reading the ids back at
their offsets (a hash collision is never reported as a duplicate).
"""
from __future__ import annotations

from array import array
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .files import open_for_append
from .rundir import spill_name

BUCKETS = 256
DEFAULT_BUFFER_ENTRIES = 1 << 19  # 8 MiB of (hash, offset) pairs


class DuplicateIds:
    """Collect ``(id, offset)`` pairs; :meth:`first_duplicate` names a duplicated id, if any."""

    def __init__(self, spill_dir: Path, buffer_entries: int = DEFAULT_BUFFER_ENTRIES):
        self.spill_dir = Path(spill_dir)
        self.buffer_entries = max(1, buffer_entries)
        self._hashes = array("q")
        self._offsets = array("q")
        self._spilled = False
        self.close()  # spill files a killed pass left behind would mix in

    def add(self, record_id: str, offset: int) -> None:
        """Record one id and the byte offset of its record."""
        self._hashes.append(hash(record_id))  # per-process random seed: the spill files live one pass only
        self._offsets.append(offset)
        if len(self._hashes) >= self.buffer_entries:
            self._spill()

    def _pairs(self) -> np.ndarray:
        pairs = np.empty((len(self._hashes), 2), dtype=np.int64)
        pairs[:, 0] = np.frombuffer(self._hashes, dtype=np.int64)
        pairs[:, 1] = np.frombuffer(self._offsets, dtype=np.int64)
        return pairs

    def _spill(self) -> None:
        pairs = self._pairs()
        self._hashes, self._offsets = array("q"), array("q")
        buckets = (pairs[:, 0].view(np.uint64) >> np.uint64(56)).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        pairs, buckets = pairs[order], buckets[order]
        bounds = np.searchsorted(buckets, np.arange(BUCKETS + 1))
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        for bucket in range(BUCKETS):
            low, high = bounds[bucket], bounds[bucket + 1]
            if high > low:
                with open_for_append(self.spill_dir / spill_name(bucket)) as handle:
                    pairs[low:high].tofile(handle)
        self._spilled = True

    def _candidate_groups(self) -> Iterable[list[int]]:
        """Offsets of records sharing a hash, group by group."""
        if not self._spilled:
            yield from _equal_hash_groups(self._pairs())
            return
        self._spill()
        for bucket in range(BUCKETS):
            path = self.spill_dir / spill_name(bucket)
            if path.is_file():
                yield from _equal_hash_groups(np.fromfile(path, dtype=np.int64).reshape(-1, 2))

    def first_duplicate(self, ids_at: Callable[[list[int]], dict[int, str]]) -> str | None:
        """The duplicated id whose second record comes first, confirmed with ``ids_at(offsets)``; or None.

        ``ids_at`` maps sorted byte offsets to the ids of the records there.  Spill files
        are removed.
        """
        try:
            groups = list(self._candidate_groups())
        finally:
            self.close()
        if not groups:
            return None
        names = ids_at(sorted({offset for group in groups for offset in group}))
        best: tuple[int, str] | None = None
        for group in groups:
            first_seen: dict[str, int] = {}
            for offset in sorted(group):
                name = names[offset]
                if name in first_seen and (best is None or offset < best[0]):
                    best = (offset, name)
                first_seen.setdefault(name, offset)
        return best[1] if best else None

    def close(self) -> None:
        """Drop the buffer and remove the spill files."""
        self._hashes, self._offsets = array("q"), array("q")
        for bucket in range(BUCKETS):
            (self.spill_dir / spill_name(bucket)).unlink(missing_ok=True)


def _equal_hash_groups(pairs: np.ndarray) -> Iterable[list[int]]:
    if len(pairs) < 2:
        return
    order = np.argsort(pairs[:, 0], kind="stable")
    hashes, offsets = pairs[order, 0], pairs[order, 1]
    same = np.flatnonzero(hashes[1:] == hashes[:-1])
    if not len(same):
        return
    groups: dict[int, set[int]] = {}
    for i in same.tolist():
        group = groups.setdefault(int(hashes[i]), set())
        group.update((int(offsets[i]), int(offsets[i + 1])))
    for group in groups.values():
        yield sorted(group)
