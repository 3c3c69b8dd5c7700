"""Load-generator benchmarks of `autoai bench` (`python -m benchmarks.bench.generator_cpu`)."""
