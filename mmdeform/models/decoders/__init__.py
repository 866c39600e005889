"""mmdeform.models.decoders."""
