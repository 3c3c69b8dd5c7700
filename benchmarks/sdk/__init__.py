"""The SDK: route selection, overhead over a direct client, publish-to-first-call
(`python -m benchmarks.sdk.route_selection`, `.overhead`, `.propagation`)."""
