"""The one base of every error a user can cause and fix: bad input, a missing file, a run dir that
holds another run. The command line catches `TelucodecError` and prints its message as one line
(`telucodec: error: ...`, exit status 2); anything else is a bug and keeps its traceback.

    class ConfigError(TelucodecError, ValueError): ...     # each module's own, named for what failed
"""

from __future__ import annotations


class TelucodecError(Exception):
    """A problem the user can fix; its message is one line saying what is wrong and how to go on."""
