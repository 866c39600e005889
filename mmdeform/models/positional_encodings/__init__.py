"""mmdeform.models.positional_encodings."""
