"""mmdeform.models.losses."""
