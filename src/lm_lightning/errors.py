"""User errors: a mistake in config, paths or checkpoints, not a bug.

They end the program with one line on stderr and exit code 2, before any expensive work.
``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix: the message says what and, where possible, how."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def report_and_exit(exc: BaseException) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        import traceback

        traceback.print_exception(exc)
    print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn the given exception types (and UserError) raised inside into UserError."""
    try:
        yield
    except UserError:
        raise
    except kinds as exc:
        raise UserError(one_line(exc)) from exc


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For CLI entry points: a UserError becomes one line on stderr and exit 2."""
    try:
        yield
    except UserError as exc:
        report_and_exit(exc)
