"""Dynamic batching: pure merge/split arithmetic and the asyncio batcher."""

from ._batcher import BatchObserver, BatchResult, DynamicBatcher, RunFn
from ._merge import Padding, group_key, merge, rows_of, split_outputs, split_rows

__all__ = [
    "BatchObserver",
    "BatchResult",
    "DynamicBatcher",
    "Padding",
    "RunFn",
    "group_key",
    "merge",
    "rows_of",
    "split_outputs",
    "split_rows",
]
