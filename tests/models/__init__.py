"""models/ and guides/: each model with its guide and closed forms."""
