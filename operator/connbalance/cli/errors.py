"""How the CLI fails: one line on stderr, and an exit code that says what kind of failure."""

EXIT_OK = 0
EXIT_USAGE = 2  # bad flags or bad input files: nothing was done
EXIT_UNAVAILABLE = 3  # a dependency (Prometheus, the API server) could not be used


class CliError(Exception):
    def __init__(self, message: str, *, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
