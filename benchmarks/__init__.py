"""The project's benchmarks, one module each, run from the repository root as modules:
``python -m benchmarks.soak``, ``python -m benchmarks.serving.run``, ``python -m
benchmarks.sdk.overhead`` (the Makefile's ``bench-*`` targets). Shared helpers come from
``autoai.testing`` (processes, ports, the control plane, example models) and ``autoai.control``
(the REST client); nothing edits ``sys.path``."""
