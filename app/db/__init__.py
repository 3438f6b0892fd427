"""Storage plumbing: the tables, the dialect vocabulary and engines."""
