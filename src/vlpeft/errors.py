"""Exceptions for problems the user can fix.

Every message says what was wrong, what was expected and how to fix it. Bugs inside vlpeft
raise ordinary Python exceptions; only these are turned into short CLI messages.
"""

from __future__ import annotations


class VlpeftError(Exception):
    """Base class for errors caused by input (arguments, files, checkpoints, datasets)."""


class ConfigError(VlpeftError, ValueError):
    """An argument or configuration value is invalid."""


class UnknownNameError(VlpeftError, LookupError):
    """A name (method, dataset, model family, template set) is not known."""


class BackboneError(VlpeftError):
    """A backbone checkpoint cannot be found, downloaded or understood."""


class DatasetError(VlpeftError):
    """A dataset folder, split file or image is missing or malformed."""
