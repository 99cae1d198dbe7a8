"""dbprobe's pytest plugin (registered through the ``pytest11`` entry point).

Inactive until asked for with ``--dbprobe``; see DESIGN.md for the options.
"""

from __future__ import annotations
