"""mmdeform.models.encoders."""
