"""mmdeform.models.detectors."""
