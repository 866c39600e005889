"""mmdeform.models.query_generators."""
