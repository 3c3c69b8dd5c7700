"""The optimizer (`blade.optimize`) on CPU and GPU (`python -m benchmarks.blade.cpu`, `.gpu`)."""
