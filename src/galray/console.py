"""What a galray command prints: one line as soon as it starts, its own results, and progress --
a tqdm bar with ETA on a terminal, a plain line every 10% or 30 s when piped (never a carriage
return).  Ray's and MLflow's own logs (Python logging, warnings, and the output of Ray's workers)
go to a log file, ``<dir>/galray-logs/<command>-<time>.log``, whose path is printed once; ``galray
-v`` leaves them on the console as Ray and MLflow print them.

Ray forwards its workers' output to the driver and prints it there (``log_to_driver``);
:func:`route_ray_worker_output` swaps that printer for one writing to the log file, ANSI codes
stripped, that also picks up the ``[galray] epoch N/M`` lines rank 0 prints
(:func:`galray.training.worker.worker_print`) to advance the driver's :func:`epoch_progress`.
Nothing here imports Ray, MLflow or torch: ``cli`` calls :func:`start` before any heavy import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
EPOCH_LINE = re.compile(r"\[galray\] (epoch (\d+)/(\d+).*)$")
BATCH_LINE = re.compile(r"\[galray\] batch (\d+)/(\d+) of epoch (\d+)/(\d+)$")
# never shown: Ray's token-auth notice advises turning authentication off
HIDDEN = ("RAY_AUTH_MODE=disabled",)
# loggers that configure their own console handlers when imported
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow", "alembic", "huey")
AUTOSCALER_EVENT = ":event_summary:"
PLAIN_EVERY_FRACTION = 0.1
PLAIN_EVERY_S = 30.0


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def is_tty(stream=None) -> bool:
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class _Clean(logging.Filter):
    """Drops :data:`HIDDEN` records; formats the rest without ANSI codes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(h in message for h in HIDDEN):
            return False
        record.msg, record.args = strip_ansi(message), None
        return True


class LogFile(logging.Handler):
    """The command's log file: records are kept until :meth:`open` (the directory known, or Ray
    starting), then written to ``<dir>/galray-logs/<command>-<time>.log``; the path is printed
    once, when the file is created.  Nothing logged: no file."""

    def __init__(self, command: str):
        super().__init__(logging.INFO)
        self.command, self.path, self.directory = command, None, None
        self._file: logging.FileHandler | None = None
        self._pending: list[logging.LogRecord] = []
        self.addFilter(_Clean())
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            if len(self._pending) < 10_000:
                self._pending.append(record)
            return
        self._file.emit(record)

    def open(self, directory: str | os.PathLike | None = None) -> None:
        """Start writing (under ``directory``, default the working directory)."""
        with self.lock:
            if self._file is not None:
                return
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder = Path(directory or self.directory or Path.cwd()) / "galray-logs"
            folder.mkdir(parents=True, exist_ok=True)
            self.path = folder / f"{self.command.replace(' ', '-')}-{stamp}-{os.getpid()}.log"
            self._file = logging.FileHandler(self.path, encoding="utf-8")
            self._file.setFormatter(self.formatter)
            pending, self._pending = self._pending, []
        echo(f"galray: Ray's and MLflow's logs: {self.path} (galray -v prints them here)")
        for record in pending:
            self._file.emit(record)

    def close(self) -> None:
        if self._file is None and self._pending:
            self.open()
        if self._file is not None:
            self._file.close()
        super().close()


class _State:
    verbose = True  # outside the CLI (Python, tests): touch nothing
    log_file: LogFile | None = None
    epochs: EpochProgress | None = None


_state = _State()


def echo(line: str) -> None:
    """One line of galray's own output (above a progress bar when one is shown)."""
    if _state.epochs is not None and _state.epochs.bar is not None:
        _state.epochs.bar.write(line)
    else:
        print(line, flush=True)


def start(command: str, *, verbose: bool) -> None:
    """Print the command's first line, then route library logs: to the log file, or (verbose)
    to the console as the libraries print them.  Called by ``cli`` before any heavy import."""
    print(f"galray {command}: starting", flush=True)
    _state.verbose = verbose
    if not is_tty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray's worker prefixes: no colour
    if verbose:
        return
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # MLflow's loggers propagate
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _state.log_file = LogFile(command)
    root = logging.getLogger()
    root.addHandler(_state.log_file)
    root.setLevel(logging.WARNING)  # Ray's loggers keep their INFO, workers' output is INFO
    logging.captureWarnings(True)
    adopt_library_loggers()


def finish() -> None:
    """Close the log file (written now if anything was logged before its directory was set)."""
    if _state.log_file is not None:
        logging.getLogger().removeHandler(_state.log_file)
        _state.log_file.close()
        _state.log_file = None


def set_log_dir(directory: str | os.PathLike) -> None:
    """Where the log file goes (a job's ``storage_path``), if it is not yet open."""
    if _state.log_file is not None and _state.log_file._file is None:
        _state.log_file.directory = directory


_timing = logging.getLogger("galray.timing")
_timing.setLevel(logging.INFO)
_T0 = time.monotonic()


def mark(stage: str) -> None:
    """Record in the log file how long after the command's start ``stage`` was reached (the
    start-up breakdown: imports, data, Ray, MLflow, first epoch)."""
    _timing.info("%s at %.1f s", stage, time.monotonic() - _T0)


def is_verbose() -> bool:
    """Whether libraries print as they do by themselves (``galray -v``, or not the CLI)."""
    return _state.verbose


def log_path() -> Path | None:
    return None if _state.log_file is None else _state.log_file.path


def adopt_library_loggers() -> None:
    """Loggers Ray and MLflow configured with their own console handlers (when imported) write
    to the log file instead; verbose: they keep them, without the hidden notices.  Called again
    once Ray is imported (:func:`galray.training.ray_env.init_ray`)."""
    for name in LIBRARY_LOGGERS:
        if name not in logging.root.manager.loggerDict:
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) or not isinstance(
                handler, logging.StreamHandler
            ):
                continue  # Ray's own session log files stay
            if _state.verbose:
                if not any(isinstance(f, _Clean) for f in handler.filters):
                    handler.addFilter(_Clean())
            else:
                logger.removeHandler(handler)
        if not _state.verbose:
            logger.propagate = True


def ray_log_to_driver(requested: bool) -> bool:
    """``log_to_driver`` for ``ray.init``: workers' output comes to the driver when asked for
    and either printed (verbose) or routed to the log file (:func:`route_ray_worker_output`)."""
    if not requested or _state.verbose:
        return requested
    return _dispatcher() is not None


def route_ray_worker_output() -> None:
    """Once Ray is connected: its workers' output goes to the log file (ANSI stripped) and rank
    0's epoch lines advance :func:`epoch_progress`; verbose: Ray prints it, epoch lines also
    advance the progress.  Opens the log file (Ray is running: there will be lines)."""
    if _state.log_file is not None:
        _state.log_file.open()
    dispatcher = _dispatcher()
    if dispatcher is None:
        return
    dispatcher.remove_handler("galray")
    if not _state.verbose:
        dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("galray", _worker_output)


def _dispatcher():
    """Ray's dispatcher of its workers' forwarded output (None if this Ray has none)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:  # a Ray without it: workers' output stays in Ray's session logs
        return None
    return global_worker_stdstream_dispatcher


_worker_logger = logging.getLogger("galray.ray_workers")
_worker_logger.setLevel(logging.INFO)


def _worker_output(data: dict) -> None:
    who = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({who} pid={data.get('pid')}) " if who else f"(pid={data.get('pid')}) "
    lines = data.get("lines", [])
    if data.get("pid") == "autoscaler":  # its status every 5 s; only its events, as Ray does
        lines = [line.split(AUTOSCALER_EVENT, 1)[1] for line in lines if AUTOSCALER_EVENT in line]
    for raw in lines:
        line = strip_ansi(raw)
        match = EPOCH_LINE.search(line)
        if match and _state.epochs is not None:
            _state.epochs.epoch(int(match.group(2)), int(match.group(3)), match.group(1))
        match = BATCH_LINE.search(line)
        if match and _state.epochs is not None:
            _state.epochs.batch(*(int(g) for g in match.groups()))
        if not _state.verbose:
            _worker_logger.info("%s%s", prefix, line)


def _fmt_s(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """A count towards ``total``: a tqdm bar on a terminal; otherwise a plain line (count,
    percentage, elapsed time, ETA) every ``every`` of the total (default 10%) or 30 s, and at
    the end.

    ``update(n)`` adds to the count, ``set_postfix_str(s)`` adds text after it, ``close()``
    ends it (a final plain line if the last one was not); also a context manager."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        enabled: bool = True,
        every: float = PLAIN_EVERY_FRACTION,
    ):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.every = every
        self.n, self.start_n = initial, initial
        self.postfix = ""
        self.t0 = self._last_t = time.monotonic()
        self._last_n = initial
        self._printed_n = None
        self._lock = threading.Lock()
        self.bar = None
        if enabled and is_tty(sys.stderr) and is_tty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if not self.enabled:
                return
            if self.bar is not None:
                self.bar.update(n)
                return
            now = time.monotonic()
            step = max(1.0, self.every * self.total)
            if (
                self.n >= self.total
                or self.n - self._last_n >= step
                or now - self._last_t >= PLAIN_EVERY_S
            ):
                self._print(now)

    def eta(self, now: float | None = None) -> float | None:
        done = self.n - self.start_n
        if done <= 0 or self.total <= self.n:
            return None if done <= 0 else 0.0
        elapsed = (now or time.monotonic()) - self.t0
        return elapsed / done * (self.total - self.n)

    def line(self, now: float | None = None) -> str:
        now = now or time.monotonic()
        pct = 100.0 * self.n / self.total if self.total else 100.0
        eta = self.eta(now)
        tail = f", ETA {_fmt_s(eta)}" if eta else ""
        text = f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({pct:.0f}%), {_fmt_s(now - self.t0)}{tail}"
        return f"{text}  {self.postfix}" if self.postfix else text

    def _print(self, now: float) -> None:
        self._last_n, self._last_t, self._printed_n = self.n, now, self.n
        print(self.line(now), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self._printed_n != self.n and self.n > self.start_n:
            self._print(time.monotonic())


def progress(
    total: int, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True
) -> Progress:
    """A :class:`Progress` (tqdm on a terminal, plain lines when piped; nothing if not
    ``enabled``)."""
    return Progress(total, desc, unit, initial, enabled)


def data_progress(total: int, desc: str, unit: str = "it") -> Progress:
    """The progress of a data step (simulate, ingest: the ``progress=`` their functions take):
    piped, a plain line every quarter of the total (or 30 s), so that their output stays short."""
    return Progress(total, desc, unit, every=0.25)


class EpochProgress:
    """The driver's view of a training's epochs, from rank 0's ``[galray] epoch N/M ...`` lines:
    on a terminal a bar with ETA and the line above it; piped, the epoch's line with the ETA
    every 10% of the epochs or 30 s, and the last."""

    def __init__(self, epochs: int, budget_s: float | None = None):
        self.epochs, self.bar, self.budget_s = epochs, None, budget_s
        self.t0 = self._last_t = time.monotonic()
        self.first: int | None = None
        self._first_t = self.t0
        self._last_epoch = 0
        self._batch_t: float | None = None  # when a batch line was last printed
        self._batch_shown = False  # a batch line since the last epoch line
        self._lock = threading.Lock()
        if is_tty(sys.stderr) and is_tty():
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, desc="epochs", unit="epoch", leave=False)

    def epoch(self, n: int, total: int, text: str) -> None:
        with self._lock:
            now = time.monotonic()
            tail = ""
            if self.first is None:  # its time includes the workers' start: no ETA yet
                self.first, self._first_t = n, now
                mark(f"first epoch line (epoch {n})")
            elif n < total:
                eta = (now - self._first_t) / max(n - self.first, 1) * (total - n)
                if self.budget_s is not None and self.budget_s - (now - self.t0) < eta:
                    # the time budget ends training first (its clock starts in the workers,
                    # a little after this one)
                    eta = max(self.budget_s - (now - self.t0), 0.0)
                tail = f"  (ETA {_fmt_s(eta)})"
            if self.bar is not None:
                self.bar.total = total
                self.bar.update(n - self.bar.n)
                self.bar.set_postfix_str("", refresh=False)  # the epoch's batches are done
                self.bar.write(text)
                return
            step = max(1, round(PLAIN_EVERY_FRACTION * total))
            if (
                n >= total
                or n - self._last_epoch >= step
                or now - self._last_t >= PLAIN_EVERY_S
                or self._last_epoch == 0
                or self._batch_shown  # a long epoch: its batches were shown, so is its end
            ):
                self._last_epoch, self._last_t, self._batch_shown = n, now, False
                print(text + tail, flush=True)

    def batch(self, k: int, n: int, epoch: int, total: int) -> None:
        """Rank 0 is on batch ``k`` of ``n`` of a long epoch: on a terminal the bar says so
        (until the epoch's line comes); piped, a plain line at once and then at most every 30 s
        (on a clock of their own: the epoch lines, which carry the metrics, keep theirs)."""
        with self._lock:
            text = f"epoch {epoch}/{total}: batch {k:,}/{n:,} ({100 * k // n} %)"
            if self.bar is not None:
                self.bar.set_postfix_str(text, refresh=True)
                return
            now = time.monotonic()
            if self._batch_t is None or now - self._batch_t >= PLAIN_EVERY_S:
                self._batch_t, self._batch_shown = now, True
                print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def epoch_progress(epochs: int, budget_s: float | None = None) -> Iterator[EpochProgress]:
    """The epochs of the training running inside the block (rank 0's lines advance it);
    ``budget_s``: the run's time budget, which bounds the ETA."""
    bar = EpochProgress(epochs, budget_s)
    _state.epochs = bar
    try:
        yield bar
    finally:
        _state.epochs = None
        bar.close()
