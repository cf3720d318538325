"""fastgn: fast, accurate Group Normalization for NumPy on the CPU.

Public API: :func:`group_norm`, :func:`group_norm_backward`,
:class:`GroupNorm`, :func:`show_config`. Set ``FASTGN_BACKEND=python`` before
import to force the pure-NumPy fallback.
"""

from ._api import group_norm, group_norm_backward
from ._config import show_config
from ._layer import GroupNorm
from ._version import __version__

__all__ = ["group_norm", "group_norm_backward", "GroupNorm", "show_config",
           "__version__"]
