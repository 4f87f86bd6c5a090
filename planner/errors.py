"""The one error type users see: a bad input, reported in one line, exit code 2."""


class PlannerError(ValueError):
    """Bad user input (unknown key, impossible shape, unknown GPU, ...).

    The message is one line that names the input and what would be valid; the
    CLI prints it and exits with code 2, never a traceback.
    """

    exit_code = 2
