"""mmdeform.models.data_preprocessors."""
