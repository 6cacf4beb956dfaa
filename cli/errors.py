"""Turn library exceptions into one-line messages and exit codes (the only place that exits)."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a typer command: XmrError -> `Error: ...` + exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from xmr.retrieval.errors import XmrError

        _quiet_libraries()
        try:
            return command(*args, **kwargs)
        except XmrError as exc:
            typer.echo(f"Error: {exc}{_option_hint(exc)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo(
                "interrupted; committed work is kept, run the command again to resume", err=True
            )
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `xmr search ... | head`
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper


def _option_hint(exc) -> str:
    """The command-line option behind the library's `setting`: token_pool -> (--token-pool)."""
    setting = getattr(exc, "setting", None)
    return f" (--{setting.replace('_', '-')})" if setting else ""


class _OnlyNamedLoggers(logging.Filter):
    """Drop what libraries log through the root logger itself (open_clip's
    `logging.warning(...)` about configs and weights): users see our messages instead.
    Named loggers (xmr.*, uvicorn.*) only pass through the root's handlers, never
    through this filter, so `xmr serve` still logs requests and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


_QUIET = _OnlyNamedLoggers()
NOISY_LOGGERS = ("open_clip", "timm", "huggingface_hub", "transformers", "torch")


def _quiet_libraries() -> None:
    root = logging.getLogger()
    if _QUIET not in root.filters:
        root.addFilter(_QUIET)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
