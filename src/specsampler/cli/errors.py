"""The command line's error, its exit statuses, and the one-line form of an exception it reports."""

from __future__ import annotations

EXIT_BAD_OPTION = 2  # a bad option, a missing model: one line on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT


class CLIError(Exception):
    """A bad option: ``main`` prints ``specsampler: error: <option>: <message>`` on stderr and returns 2.

    Parameters
    ----------
    option : str
        The option at fault (``--target``, ``--top-p``, ...), or the subcommand.
    message : str
        What is wrong, on one line.
    """

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}" if option else message)
        self.option = option


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    str
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
