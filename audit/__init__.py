"""basin.audit: attacks that try to bring forgotten knowledge back, and the metrics that score it."""
