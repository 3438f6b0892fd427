"""The webhook dispatcher: fan the log out to endpoints and post each delivery, signed."""
