"""mmdeform.models.necks."""
