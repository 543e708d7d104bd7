"""Optional adapters to peer tools (NNI). Nothing else in ``nas`` imports this package."""
