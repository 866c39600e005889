"""mmdeform.visualization."""
