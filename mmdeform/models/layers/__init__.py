"""mmdeform.models.layers."""
