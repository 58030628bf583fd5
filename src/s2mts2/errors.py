"""User-facing errors: a message that names the file, row or option and what was expected."""


class S2MTS2Error(Exception):
    """Base class of errors caused by the user's input (data, config, flags)."""


class ConfigError(S2MTS2Error):
    """A configuration key, value or flag is wrong."""


class DataError(S2MTS2Error):
    """An input file, CSV column, row or image is wrong."""


class DivergenceError(S2MTS2Error):
    """Training produced a non-finite loss (a learning rate or precision the run cannot take)."""
