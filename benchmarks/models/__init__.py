"""A hundred model versions on one eas-server instance against one process per version (issue 18):
`python -m benchmarks.models.run`; README.md says what it measures and how."""
