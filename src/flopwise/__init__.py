"""flopwise: plan, prepare data for and train large language models at high compute efficiency."""

from flopwise.errors import FlopwiseError

__version__ = "0.1.0"
__all__ = ["FlopwiseError", "__version__"]
