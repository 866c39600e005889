"""mmdeform.structures."""
