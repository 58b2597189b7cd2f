"""User-facing errors.

Anything a user can cause (bad path, unreadable audio, unknown label, config typo) raises
``KwsError`` with a one-line message naming the file or field. The CLI prints that line and
exits non-zero instead of showing a traceback.
"""


class KwsError(Exception):
    """An error caused by user input; its message is shown as-is on one line."""


class AudioError(KwsError):
    """A file that cannot be read as audio. ``path`` names it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
