"""Built-in plugins; importing this package registers them."""

from . import response_rewrite, say

__all__ = ["response_rewrite", "say"]
