"""skulens export package."""
