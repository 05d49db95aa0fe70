"""Stand-in for modules/errors.py (A1111 v1.10.1): report()/display() print to stderr and remember the exception."""
import sys
import traceback

exception_records = []
"""Every exception seen by report()/display(), newest last (the host keeps formatted text; we keep the objects so tests can assert)."""


def record_exception():
    """mirrors modules/errors.py:record_exception — remembers the exception being handled."""
    _, e, _ = sys.exc_info()
    if e is not None and (not exception_records or exception_records[-1] is not e):
        exception_records.append(e)


def report(message: str, *, exc_info: bool = False) -> None:
    """mirrors modules/errors.py:report — prints '*** message' (and the traceback) to stderr."""
    record_exception()
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), file=sys.stderr)
        print("---", file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False):
    """mirrors modules/errors.py:display — prints task name and the exception."""
    record_exception()
    if not exception_records or exception_records[-1] is not e:
        exception_records.append(e)
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(*traceback.TracebackException.from_exception(e).format(), sep="", file=sys.stderr)


already_displayed = {}


def display_once(e: Exception, task):
    """mirrors modules/errors.py:display_once."""
    if task in already_displayed:
        record_exception()
        return
    display(e, task)
    already_displayed[task] = 1
