"""HTTP routes, one module per resource. Routes validate, call, shape."""
