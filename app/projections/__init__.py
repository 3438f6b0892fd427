"""Read models derived only from the log."""
