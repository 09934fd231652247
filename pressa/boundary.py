"""The command line's error boundary. Whatever goes wrong inside a command reaches the user as one
line on stderr: a mistake of theirs (a usage error the CLI framework found, a bad path or value, an
output that cannot be written) exits 2; a bug in pressa exits 1 and says how to see its traceback
(`--log_level 0`); Ctrl-C exits 130 and SIGTERM/SIGHUP 128 + the signal, after the same cleanup as
an error (temporary folders removed, partial outputs never renamed into place)."""

from __future__ import annotations

import errno
import os
import sys
import traceback

from pressa.errors import PressaError, first_line

# operating-system failures that are about the user's paths or machine, not a bug of pressa's
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.ENAMETOOLONG, errno.EMFILE, errno.ENOMEM, errno.EFBIG, errno.EXDEV}


def _framework():
    """The click that typer runs on: typer >= 0.29 bundles its own (`typer._click`); pyproject pins it."""
    import typer
    from typer._click import exceptions

    return typer, exceptions


def debug_requested(argv: list[str]) -> bool:
    """`--log_level 0` (or `--log-level=0`) anywhere on the command line, or PRESSA_DEBUG=1."""
    if os.environ.get("PRESSA_DEBUG") == "1":
        return True
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--log_level", "--log-level"):
            if (value if eq else (argv[i + 1] if i + 1 < len(argv) else "")) == "0":
                return True
    return False


def say(message: str) -> None:
    """One line on stderr (newlines in the message folded), with 'error:' in red on a terminal."""
    from pressa import log

    text = " ".join(str(message).split())
    log.err.print(f"[red]error:[/red] {text}", markup=True, soft_wrap=True, highlight=False)


def _silence_stdout() -> None:
    """After a closed pipe (`pressa generate ... | head`), nothing more may be written to stdout."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run(command, argv: list[str]) -> int:
    """Run the click command on argv; returns the exit status."""
    from pressa.artifact import Interrupted, signals_as_exceptions
    from pressa.artifact.folder import raise_if_interrupted

    typer, click = _framework()
    try:
        with signals_as_exceptions():
            rv = command.main(args=argv, prog_name="pressa", standalone_mode=False)
            raise_if_interrupted()
            sys.stdout.flush()
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except SystemExit as e:
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":     # typer's own answer to a closed stdout
            _silence_stdout()
            return 0
        return e.code if isinstance(e.code, int) else 1
    except click.NoArgsIsHelpError as e:
        print(e.format_message())
        return 0
    except click.UsageError as e:
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        say(f"{e.format_message()}{where}")
        return 2
    except click.ClickException as e:
        say(e.format_message())
        return e.exit_code
    except PressaError as e:
        say(str(e))
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        say("interrupted")
        return 130
    except Interrupted as e:
        say("terminated")
        return 128 + e.signum
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            return _bug(e, argv)
        where = f"{e.filename}: " if e.filename else ""
        say(f"{where}{e.strerror or first_line(e)}")
        return 2
    except Exception as e:
        return _bug(e, argv)


def _bug(err: Exception, argv: list[str]) -> int:
    if debug_requested(argv):
        traceback.print_exception(err, file=sys.stderr)
    say(f"internal error: {type(err).__name__}: {first_line(err, 300)} - this is a bug in pressa; run again "
        "with --log_level 0 to see the traceback, and report it")
    return 1
