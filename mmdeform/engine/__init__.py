"""mmdeform.engine."""
