"""The worker: claims tasks, runs a generator, records each step."""
