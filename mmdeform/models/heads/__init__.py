"""mmdeform.models.heads."""
