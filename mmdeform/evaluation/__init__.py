"""mmdeform.evaluation."""
