"""Errors raised for bad input.

Every error a user can cause is a :class:`SkinCoreError` whose message is one clear
sentence: what was expected, what was found (file, row or id, column) and what to do.
The command line prints the message and exits with status 2; the app shows it on the page.
"""

from __future__ import annotations


class SkinCoreError(ValueError):
    """Bad input or a state the user can fix; the message says what and how."""


class DataError(SkinCoreError):
    """A dataset, CSV or folds file is missing, malformed or inconsistent."""


class ImageError(SkinCoreError):
    """An image file cannot be decoded safely (not an image, truncated, too large...)."""


class ConfigError(SkinCoreError):
    """An option, architecture name or configuration value is not valid."""
