"""A stand-in for the ``geoimplicit`` executable, for the QGIS plugin's runner tests.

Speaks the same JSON progress stream as ``geoimplicit --progress json``. Behaviour from $FAKE_MODE:
ok (progress, writes the -o file, announces it), fail (one-line error, exit 2), crash (SIGSEGV), exit3,
slow (a child process, a partial output file, progress until killed), stubborn (as slow, ignoring SIGINT and
SIGTERM). $FAKE_LOG, when set, receives the argv and the pids as JSON.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def emit(**message):
    print(json.dumps(message), flush=True)


def main():
    args = sys.argv[1:]
    if args[:2] != ["--progress", "json"]:
        print("Error: expected --progress json first", file=sys.stderr)
        sys.exit(2)
    args = args[2:]
    mode = os.environ.get("FAKE_MODE", "ok")
    out = Path(args[args.index("-o") + 1]) if "-o" in args else None
    record = {"argv": args, "pid": os.getpid()}
    log = os.environ.get("FAKE_LOG")

    def write_log():
        if log:
            Path(log).write_text(json.dumps(record))

    write_log()
    print("INFO fake: starting", file=sys.stderr, flush=True)
    if mode == "ok":
        for i in range(5):
            emit(type="progress", stage="tiles", done=i + 1, total=5, fraction=(i + 1) / 5, message=f"tile {i + 1}")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("fake output")
        emit(type="result", outputs={"output": str(out)})
    elif mode == "fail":
        message = "points.laz: not a LAS/LAZ file (bad signature). Pass a LAS or LAZ file"
        emit(type="error", message=message)
        print(f"Error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    elif mode == "crash":
        print("Fatal Python error: Segmentation fault", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "exit3":
        print("something odd happened", file=sys.stderr, flush=True)
        sys.exit(3)
    elif mode in ("slow", "stubborn"):
        if mode == "stubborn":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        record["child"] = child.pid
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(f".{out.stem}.partial-0123abcd{out.suffix}")
            partial.write_text("half")
            record["partial"] = str(partial)
        write_log()
        for i in range(1200):
            emit(type="progress", stage="tiles", done=i + 1, total=1200, fraction=(i + 1) / 1200, message="")
            time.sleep(0.05)
        sys.exit(0)
    else:
        sys.exit(f"unknown FAKE_MODE {mode}")


if __name__ == "__main__":
    main()
