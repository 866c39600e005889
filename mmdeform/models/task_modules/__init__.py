"""mmdeform.models.task_modules."""
