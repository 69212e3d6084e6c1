"""Streaming file reading shared by the loaders: plain or gzipped text, line numbers,
sha256 fingerprints computed on the fly, an optional rich progress bar, timestamp parsing,
and errors that name the file and line.
"""

import codecs
import contextlib
import datetime as dt
import decimal
import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from automr.data.protocol import timestamp_problem
from automr.data.records import ID_SEPARATOR
from automr.errors import AutomrError
from automr.paths import home_path
from automr.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def where(path: Path | str, line: int | None = None) -> str:
    """``"reviews.json.gz line 17"``: the location part of an error message."""
    return f"{path} line {line}" if line is not None else str(path)


def bad_input(path: Path | str, line: int | None, problem: str, fix: str) -> AutomrError:
    """An :class:`AutomrError` that says what is wrong, where (file and line) and how to fix it."""
    return AutomrError(f"{where(path, line)}: {problem}. {fix}")


def checked_user(path: Path | str, line: int | None, user: str) -> str:
    """``user``, or an error naming the file and line when it holds ``@<digits>:``, which ends
    the user in a sample id (:data:`automr.data.records.ID_SEPARATOR`)."""
    if ID_SEPARATOR.search(user):
        raise bad_input(path, line, f"user {user!r} holds '@<digits>:', which sample ids "
                        f"(user@timestamp:target) use to end the user",
                        "Rename the user (e.g. replace its '@')")
    return user


def checked_timestamp(path: Path | str, line: int | None, seconds: int, fix: str) -> int:
    """``seconds`` if it is an acceptable interaction time
    (:func:`automr.data.protocol.timestamp_problem`), else an error naming the file and line."""
    problem = timestamp_problem(seconds)
    if problem is not None:
        raise bad_input(path, line, problem, fix)
    return seconds


def require_file(path: Path | str, what: str) -> Path:
    path = home_path(path)
    if not path.is_file():
        raise AutomrError(f"{what} file {path} does not exist (or is not a file). "
                          f"Check the path you passed.")
    return path


class _HashingReader(io.RawIOBase):
    """Wraps a binary file: hashes every byte read and reports progress."""

    def __init__(self, raw: io.BufferedReader, progress: Progress | None, task: int | None):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.progress = progress
        self.task = task

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self.raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            if self.progress is not None and self.task is not None:
                self.progress.advance(self.task, n)
        return n or 0


class LineSource:
    """Iterate ``(line_number, text)`` over a text file, gzip-transparent (by magic bytes).

    After a complete pass, :attr:`sha256` is the sha256 of the file's bytes on disk (the
    compressed bytes for ``.gz``), so fingerprinting costs no second read.
    """

    def __init__(self, path: Path, encoding: str = "utf-8", progress: Progress | None = None):
        self.path = path
        self.encoding = encoding
        self.progress = progress
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError("sha256 is known only after a complete pass over the file")
        return self._sha256

    def non_blank(self, what: str, fix: str) -> Iterator[tuple[int, str]]:
        """The lines that are not blank; a file without one is an error saying it holds no
        ``what`` (``fix``: what to do)."""
        found = False
        for number, line in self:
            if line.strip():
                found = True
                yield number, line
        if not found:
            raise bad_input(self.path, None, f"holds no {what} (the file is empty or blank)", fix)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        task = None
        if self.progress is not None:
            task = self.progress.add_task(self.path.name, total=self.path.stat().st_size)
        with self.path.open("rb") as raw:
            hashing = _HashingReader(raw, self.progress, task)
            buffered = io.BufferedReader(hashing, buffer_size=1 << 20)
            is_gz = buffered.peek(2)[:2] == b"\x1f\x8b"
            binary = gzip.GzipFile(fileobj=buffered) if is_gz else buffered
            text = io.TextIOWrapper(binary, encoding=self.encoding, newline=None)
            try:
                try:
                    for number, line in enumerate(text, start=1):
                        # A leading byte-order mark (Excel's "CSV UTF-8", some editors' JSON
                        # lines) is not part of the first line's text.
                        yield number, (line.removeprefix("\ufeff") if number == 1
                                       else line).rstrip("\n")
                except UnicodeDecodeError:  # finding the line reads again: a gzip may fail
                    if is_utf16(self.path):  # Excel's "Unicode Text": not latin-1, not lines
                        raise bad_input(self.path, None, f"is UTF-16 text (it starts with a "
                                        f"UTF-16 byte-order mark), not {self.encoding}",
                                        f"Save it as {self.encoding} (e.g. `iconv -f utf-16 "
                                        f"-t {self.encoding}`)") from None
                    line, column, byte = first_undecodable(self.path, self.encoding)
                    raise bad_input(self.path, line, f"not valid {self.encoding} text (byte "
                                    f"{byte!r}, the line's byte {column})",
                                    f"Save the file as {self.encoding} (e.g. `iconv -f latin1 "
                                    f"-t {self.encoding}`)") from None
            except (OSError, EOFError, zlib.error) as error:  # truncated / corrupt gzip
                raise bad_input(self.path, None, f"could not be read ({error})",
                                "Download the file again") from None
            # Drain whatever the text layer did not need so the hash covers the whole file.
            while hashing.read(1 << 20):
                pass
        self._sha256 = hashing.digest.hexdigest()
        if self.progress is not None and task is not None:
            self.progress.remove_task(task)


def utf8_or_latin1(path: Path) -> str:
    """``"utf-8"`` where ``path`` (plain or gzipped) decodes as UTF-8, else ``"latin-1"``: for
    files published in Latin-1 (GroupLens' ``u.item``) that users also save as UTF-8. Latin-1
    decodes any byte, so a UTF-8 copy read as Latin-1 would give "MisÃ©rables" without an
    error; Latin-1 text with accents is practically never valid UTF-8."""
    with path.open("rb") as raw:
        binary = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == b"\x1f\x8b" else raw
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            while chunk := binary.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except (UnicodeDecodeError, OSError, EOFError, zlib.error):  # a damaged file: the
            return "latin-1"  # reading says what is wrong with it
    return "utf-8"


def is_utf16(path: Path) -> bool:
    """Whether ``path`` (plain or gzipped) starts with a UTF-16 byte-order mark, as Excel's
    "Unicode Text" files do."""
    with path.open("rb") as raw:
        binary = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == b"\x1f\x8b" else raw
        return binary.read(2) in (b"\xff\xfe", b"\xfe\xff")


def first_undecodable(path: Path, encoding: str) -> tuple[int | None, int | None, bytes]:
    """Where ``path`` (plain or gzipped) first fails to decode: its line, the 1-based place in
    that line and the byte (the text layer decodes whole chunks, so its error's position says
    neither). Read again from the start, only once a decoding error was met."""
    with path.open("rb") as raw:
        binary = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == b"\x1f\x8b" else raw
        for number, line in enumerate(binary, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as error:
                return number, error.start + 1, line[error.start:error.start + 1]
    return None, None, b""


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress | None]:
    """A transient rich progress bar (bytes read per file) on stderr, or None if disabled."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )
    with progress:
        yield progress


def parse_unix_seconds(text: str) -> int:
    """Unix seconds from ``"881250949"`` / ``"881250949.0"`` (ValueError otherwise)."""
    try:
        return int(text)  # exact, however large (a float would round 17 digits)
    except ValueError:
        pass
    try:  # exact: a float rounds 1500000000.99999999 up to a whole second
        value = _seconds(text)
    except decimal.InvalidOperation:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if value != value.to_integral_value():
        raise ValueError(f"not a whole number of seconds: {text!r}")
    return int(value)


def _seconds(text: str) -> decimal.Decimal:
    """``text`` as a finite decimal number of seconds of fewer than 10,000 digits
    (InvalidOperation otherwise): ``int()`` of ``1e9999999`` would build a ten-million-digit
    integer, most of an hour, for a value no loader accepts (one of thousands of digits is
    still read, and refused as out of range with its size)."""
    value = decimal.Decimal(text)
    if not value.is_finite() or (value and value.adjusted() >= 10_000):
        raise decimal.InvalidOperation(text)
    return value


ISO_FRACTION = re.compile(r"(\d\d:\d\d:\d\d)[.,]\d+")
"""A fraction of a second in an ISO time (after ``HH:MM:SS``); group 1: all before it."""


def parse_timestamp(text: str) -> int:
    """Unix seconds from a second count (a fraction dropped) or an ISO 8601 date/datetime.

    ISO values without a timezone are taken as UTC (``2017-03-05`` -> midnight UTC). A bare
    integer is always Unix seconds, so a date must be written with dashes: ``20170714`` is
    20,170,714 s (1970-08-22), not 2017-07-14.
    """
    text = text.strip()
    try:
        return parse_unix_seconds(text)
    except ValueError:
        pass
    try:  # a fraction of a second is dropped, as an ISO time's is
        return int(_seconds(text).to_integral_value(rounding=decimal.ROUND_FLOOR))
    except decimal.InvalidOperation:
        pass
    # the fraction is cut from the text: dropped toward the earlier second, as a count's is, and
    # Python 3.10's fromisoformat takes only 3 or 6 digits of one
    text = ISO_FRACTION.sub(r"\1", text.replace("Z", "+00:00"), count=1)
    parsed = dt.datetime.fromisoformat(text)  # ValueError if not ISO
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp())
