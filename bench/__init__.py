"""`make bench`: reproducible figures, each next to a baseline from the same run."""
