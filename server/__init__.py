"""skulens server package."""
