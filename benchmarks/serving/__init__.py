"""The serving benchmark of issues 3 and 16: ours vs a naive FastAPI server, a batching peer and
the in-process onnxruntime ceiling, over HTTP and gRPC. Run it as
`python -m benchmarks.serving.run --help`."""
