"""How far one ZooKeeper carries the store (`python -m benchmarks.scaling.capacity`)."""
