"""Run the ``geoimplicit`` command line as a subprocess and follow its JSON progress stream.

Pure Python (no QGIS import), so that it can be tested anywhere. The QGIS algorithms bind the callbacks to
``feedback``. The CLI is started as ``geoimplicit --progress json COMMAND ...``; its stdout carries one JSON
object a line::

    {"type": "progress", "stage": "tiles", "done": 3, "total": 10, "fraction": 0.3, "message": "..."}
    {"type": "result", "outputs": {"dsm": "/abs/path/dsm.tif"}}
    {"type": "error", "message": "..."}

and stderr a one-line ``Error: ...`` on failure. Exit codes: 0 success, 1 failure, 2 bad input or usage,
130 cancelled; anything else (or death by a signal) is a crash.

Four ways a run can end badly are told apart, each its own exception class: :class:`CouldNotStartError`
(no executable, not executable), :class:`CrashedError` (killed by a signal, or an exit code the CLI never
uses), :class:`CancelledRunError` (the user cancelled; the process group is killed and partial outputs are
removed) and :class:`FailedError` (the CLI reported an error: its one-line message is kept).
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

EXECUTABLE_NAME = "geoimplicit"
ENV_EXECUTABLE = "GEOIMPLICIT_EXECUTABLE"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
PARTIAL_MARK = ".partial-"  # geoimplicit.outputs.partial_path: ".{stem}.partial-XXXXXXXX{suffix}"

ProgressFn = Callable[[float, str, float, float, str], None]  # (fraction 0..1, stage, done, total, message)
LogFn = Callable[[str], None]
CancelFn = Callable[[], bool]


class RunError(Exception):
    """A geoimplicit run that did not succeed. ``kind`` is one of the four outcomes below."""

    kind = "error"

    def __init__(self, message: str, *, returncode: Optional[int] = None, stderr: str = ""):
        super().__init__(message)
        self.message = message
        self.returncode = returncode
        self.stderr = stderr


class CouldNotStartError(RunError):
    """The executable was not found or could not be started."""

    kind = "could not start"


class CrashedError(RunError):
    """The process died from a signal, or exited with a code the CLI never uses."""

    kind = "crashed"


class CancelledRunError(RunError):
    """The run was cancelled (by the user, or the CLI reported exit code 130)."""

    kind = "cancelled"


class FailedError(RunError):
    """The CLI ran and reported an error (exit code 1 or 2): ``message`` is its one line."""

    kind = "failed"


@dataclass
class RunResult:
    """What a successful run produced."""

    command: List[str]
    returncode: int
    outputs: Dict[str, str] = field(default_factory=dict)
    progress: List[dict] = field(default_factory=list)
    stderr: str = ""
    seconds: float = 0.0


def find_executable(configured: Optional[str] = None, environ: Optional[dict] = None) -> str:
    """Path of the ``geoimplicit`` executable.

    Order: ``configured`` (the Processing setting: a path, or a name looked up on PATH), then the
    ``GEOIMPLICIT_EXECUTABLE`` environment variable, then ``geoimplicit`` on PATH.
    Raises :class:`CouldNotStartError` with the fix when none is found.
    """
    environ = os.environ if environ is None else environ
    path_var = environ.get("PATH", os.defpath)
    for source, value in (("the Processing setting", configured), (ENV_EXECUTABLE, environ.get(ENV_EXECUTABLE))):
        value = (value or "").strip()
        if not value:
            continue
        value = os.path.expanduser(value)
        if os.sep in value or (os.altsep and os.altsep in value):
            if os.path.isfile(value) and os.access(value, os.X_OK):
                return value
            reason = "does not exist" if not os.path.exists(value) else "is not an executable file"
            raise CouldNotStartError(
                f"could not start geoimplicit: {value} (from {source}) {reason}. Fix the path under Settings > "
                f"Options > Processing > Providers > geoimplicit, or leave it empty to use {EXECUTABLE_NAME} on PATH"
            )
        found = shutil.which(value, path=path_var)
        if found:
            return found
        raise CouldNotStartError(
            f"could not start geoimplicit: {value!r} (from {source}) is not on PATH. Give the full path of the "
            f"executable (e.g. /path/to/repo/.venv/bin/{EXECUTABLE_NAME})"
        )
    found = shutil.which(EXECUTABLE_NAME, path=path_var)
    if found:
        return found
    raise CouldNotStartError(
        f"could not start geoimplicit: no '{EXECUTABLE_NAME}' executable on PATH. Install geoimplicit "
        f"(pip install geoimplicit, or make venv in the repository) and set its full path, e.g. "
        f"/path/to/repo/.venv/bin/{EXECUTABLE_NAME}, under Settings > Options > Processing > Providers > geoimplicit"
    )


def build_command(executable: str, args: Sequence) -> List[str]:
    """``[executable, "--progress", "json", *args]`` with every argument as a string."""
    return [str(executable), "--progress", "json", *(str(a) for a in args)]


def format_command(command: Sequence[str]) -> str:
    """The command line as a user would type it (for the log)."""
    return " ".join(shlex.quote(str(c)) for c in command)


def parse_line(line: str) -> Optional[dict]:
    """The JSON message on one stdout line, or None for anything else (plain text, other JSON)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") not in ("progress", "result", "error"):
        return None
    return message


def progress_fraction(message: dict) -> float:
    """The fraction 0..1 of a progress message (from ``fraction``, else ``done/total``)."""
    fraction = message.get("fraction")
    if fraction is None:
        try:
            total = float(message.get("total") or 0)
            fraction = float(message.get("done") or 0) / total if total else 0.0
        except (TypeError, ValueError):
            fraction = 0.0
    try:
        return min(max(float(fraction), 0.0), 1.0)
    except (TypeError, ValueError):
        return 0.0


def error_line(stderr: str) -> Optional[str]:
    """The CLI's one-line message (the last ``Error: ...`` line of stderr, without the prefix)."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("Error: "):
            return line[len("Error: "):].strip()
    return None


def describe_exit(returncode: int) -> str:
    """``"killed by signal SIGSEGV"`` or ``"exit code 3"``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit code {returncode}"


def remove_partial_outputs(paths: Iterable) -> List[Path]:
    """Delete the temporary ``.NAME.partial-*`` siblings that an interrupted atomic write may leave (inside an
    existing output folder too, where geoimplicit stages when the folder is a mount point)."""
    removed = []
    for path in paths:
        if not path:
            continue
        path = Path(path)
        if not path.parent.is_dir():
            continue
        candidates = list(path.parent.glob(f".{path.stem}{PARTIAL_MARK}*"))
        if path.is_dir():
            candidates += list(path.glob(f".{path.stem}{PARTIAL_MARK}*"))
        for candidate in candidates:
            try:
                shutil.rmtree(candidate) if candidate.is_dir() else candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass
    return removed


def _signal_group(proc: subprocess.Popen, sig) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        elif sig == getattr(signal, "SIGKILL", None) or sig == signal.SIGTERM:
            proc.kill()
        else:
            proc.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))
    except (ProcessLookupError, PermissionError, OSError):
        pass


def stop_process_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop the process and its children: SIGINT (the CLI cleans up), then SIGTERM, then SIGKILL."""
    steps = [(signal.SIGINT, grace_s), (signal.SIGTERM, 2.0)]
    for sig, wait_s in steps:
        if proc.poll() is not None:
            break
        _signal_group(proc, sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        _signal_group(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
        proc.wait()
    # children that outlived the leader (workers, ffmpeg) are still in the group: make sure they are gone
    if os.name == "posix":
        _signal_group(proc, signal.SIGKILL)


def _reader(stream, name: str, sink: "queue.Queue") -> None:
    try:
        for line in iter(stream.readline, ""):
            sink.put((name, line))
    except (OSError, ValueError):
        pass
    finally:
        sink.put((name, None))


def run_cli(
    args: Sequence,
    *,
    executable: Optional[str] = None,
    on_progress: Optional[ProgressFn] = None,
    on_log: Optional[LogFn] = None,
    is_cancelled: Optional[CancelFn] = None,
    outputs: Iterable = (),
    env: Optional[dict] = None,
    cwd: Optional[str] = None,
    poll_s: float = 0.1,
    kill_grace_s: float = 5.0,
    on_start: Optional[Callable[[subprocess.Popen], None]] = None,
) -> RunResult:
    """Run ``geoimplicit --progress json ARGS`` and return its announced outputs.

    Args:
        args: the command and its options, e.g. ``["dsm", "--points", "a.laz", "-o", "dsm.tif"]``.
        executable: path of the CLI (default: :func:`find_executable`).
        on_progress: called with (fraction 0..1, stage, done, total, message) for every progress line.
        on_log: called with every other line of output (stderr log lines, non-JSON stdout).
        is_cancelled: polled every ``poll_s``; when true the whole process group is stopped.
        outputs: output paths of this run, whose partial files are removed after a cancel or a crash.
        on_start: called with the Popen object once started (tests use it to see the pid).

    Raises:
        CouldNotStartError, CrashedError, CancelledRunError, FailedError.
    """
    executable = executable or find_executable()
    command = build_command(executable, args)
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONUNBUFFERED"] = "1"
    run_env.setdefault("PYTHONIOENCODING", "utf-8")
    popen_kw = {}
    if os.name == "posix":
        popen_kw["start_new_session"] = True  # its own process group: cancel kills its children too
    else:  # pragma: no cover - Windows
        popen_kw["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=run_env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **popen_kw,
        )
    except OSError as exc:
        raise CouldNotStartError(f"could not start geoimplicit ({executable}): {exc.strerror or exc}") from exc
    if on_start is not None:
        on_start(proc)

    lines: "queue.Queue" = queue.Queue()
    threads = [
        threading.Thread(target=_reader, args=(proc.stdout, "stdout", lines), daemon=True),
        threading.Thread(target=_reader, args=(proc.stderr, "stderr", lines), daemon=True),
    ]
    for thread in threads:
        thread.start()

    result = RunResult(command=command, returncode=-1)
    stderr_lines: List[str] = []
    error_message: Optional[str] = None
    open_streams = 2
    cancelled = False
    try:
        while open_streams:
            if is_cancelled is not None and is_cancelled():
                cancelled = True
                break
            try:
                name, line = lines.get(timeout=poll_s)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            if name == "stderr":
                stderr_lines.append(line.rstrip("\n"))
                if on_log is not None and not line.startswith("Error: "):
                    on_log(line.rstrip("\n"))
                continue
            message = parse_line(line)
            if message is None:
                if on_log is not None and line.strip():
                    on_log(line.rstrip("\n"))
            elif message["type"] == "progress":
                fraction = progress_fraction(message)
                result.progress.append(message)
                if on_progress is not None:
                    on_progress(fraction, str(message.get("stage") or ""), message.get("done") or 0,
                                message.get("total") or 0, str(message.get("message") or ""))
            elif message["type"] == "result":
                result.outputs.update({str(k): str(v) for k, v in (message.get("outputs") or {}).items()})
            elif message["type"] == "error":
                error_message = str(message.get("message") or "")
        while proc.poll() is None and not cancelled:
            if is_cancelled is not None and is_cancelled():
                cancelled = True
                break
            try:
                proc.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                pass
    except BaseException:
        stop_process_group(proc, kill_grace_s)
        remove_partial_outputs(outputs)
        raise
    finally:
        if cancelled:
            stop_process_group(proc, kill_grace_s)
            remove_partial_outputs(outputs)
        for stream in (proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    returncode = proc.returncode
    result.returncode = returncode
    result.stderr = "\n".join(stderr_lines)
    result.seconds = time.monotonic() - t0
    if cancelled:
        raise CancelledRunError("geoimplicit was cancelled; outputs were not written", returncode=returncode,
                                stderr=result.stderr)
    if returncode == EXIT_OK:
        return result
    message = error_message or error_line(result.stderr)
    if returncode == EXIT_CANCELLED:
        remove_partial_outputs(outputs)
        raise CancelledRunError(f"geoimplicit was interrupted: {message or 'exit code 130'}",
                                returncode=returncode, stderr=result.stderr)
    tail = "\n".join(stderr_lines[-15:]).strip()
    if returncode in (EXIT_FAILED, EXIT_USAGE):
        remove_partial_outputs(outputs)
        raise FailedError(message or tail or f"geoimplicit failed ({describe_exit(returncode)})",
                          returncode=returncode, stderr=result.stderr)
    remove_partial_outputs(outputs)
    raise CrashedError(
        f"geoimplicit crashed ({describe_exit(returncode)})" + (f"; last output:\n{tail}" if tail else ""),
        returncode=returncode, stderr=result.stderr,
    )


if __name__ == "__main__":  # a debugging aid: python runner.py dsm --points ...
    try:
        done = run_cli(sys.argv[1:], on_progress=lambda f, s, d, t, m: print(f"{f:6.1%} {s} {m}"), on_log=print)
    except RunError as exc:
        print(f"{exc.kind}: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(done.outputs, indent=1))
