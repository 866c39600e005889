"""mmdeform.models.positional_encodings."""
from .sine import SinePositionalEncoding

__all__ = ['SinePositionalEncoding']
