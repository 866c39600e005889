"""mmdeform.datasets."""
