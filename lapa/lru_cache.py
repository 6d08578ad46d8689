"""A thread-safe least-recently-used cache of computed values, with hit and miss counts.

The policy backends keep one of instruction embeddings (torch: lapa/policy/text_encoder.py,
ONNX Runtime and TensorRT: export/ort_policy.py): an instruction is encoded once, then every
control step reuses it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[K], compute: Callable[[list[K]], Iterable[V]]) -> list[V]:
        """The values of `keys`, in order. The keys not cached yet go to `compute` in one call (each
        distinct key once, in first-seen order), which returns their values in that order."""
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._entries))
            self.hits += len(keys) - sum(1 for k in keys if k in missing)
            self.misses += len(missing)
            if missing:
                for key, value in zip(missing, compute(missing), strict=True):
                    self._entries[key] = value
            values = []
            for key in keys:
                self._entries.move_to_end(key)
                values.append(self._entries[key])
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
        return values

    def get(self, key: K, compute: Callable[[K], V]) -> V:
        """The value of one key, computed by `compute(key)` when it is not cached."""
        return self.get_many([key], lambda missing: [compute(missing[0])])[0]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class CachedLookup:
    """What a class that answers from an `LruCache` in `self._cache` reports about it: size, hits,
    misses, membership (the torch and ONNX Runtime instruction caches)."""

    _cache: LruCache

    @property
    def max_size(self) -> int:
        return self._cache.max_size

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache
