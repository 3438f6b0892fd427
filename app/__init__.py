"""vidledger: the event-sourced status service for image-to-video generation."""
