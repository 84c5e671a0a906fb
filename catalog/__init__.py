"""skulens catalog package."""
