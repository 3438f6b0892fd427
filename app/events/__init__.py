"""The append-only log: event shapes, upcasters and the store."""
