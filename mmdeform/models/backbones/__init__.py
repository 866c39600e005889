"""mmdeform.models.backbones."""
