"""The serving benchmark of issue 3: ours vs a naive FastAPI server, a batching peer and the
in-process onnxruntime ceiling. Run it as `python benchmarks/serving/run.py --help`."""
