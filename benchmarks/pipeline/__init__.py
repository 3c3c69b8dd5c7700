"""Pipeline bundles (issue 19): the intent and slot heads' accuracy on held-back sentences (plain,
blade, int8: `python -m benchmarks.pipeline.accuracy`) and text through the `pipeline` processor
against the same model fed pre-tokenized tensors (`python -m benchmarks.pipeline.throughput`).
The bundles come from `scripts/build_bundles.py` (`make bundles`)."""
