"""Where the threads of this process spend their time: Python stacks sampled every ``every_s`` (a poor man's
py-spy, for machines where none can be installed).

    with StackSampler() as s:
        run()
    s.top(15)  # {thread group: [(share of its samples, "file:line function"), ...]}

A sample counts the innermost frame of this package (``geoimplicit/``) on each thread's stack, with the line,
so that a thread waiting in C (a lock, a CUDA synchronisation, GDAL) is charged to the line that waits.
Threads are grouped by name without their numbers ("ThreadPoolExecutor-0_3" -> "ThreadPoolExecutor-_").
Worker processes are not seen.
"""

from __future__ import annotations

import collections
import re
import sys
import threading

_OURS = ("/geoimplicit/",)


def _frame_key(frame) -> str:
    """The innermost frame of this package on ``frame``'s stack (else the innermost frame), as file:line func."""
    leaf, f = frame, frame
    while f is not None:
        if any(s in f.f_code.co_filename for s in _OURS):
            leaf = f
            break
        f = f.f_back
    path = leaf.f_code.co_filename
    short = path.split("/geoimplicit/", 1)[-1] if "/geoimplicit/" in path else path.rsplit("/", 1)[-1]
    return f"{short}:{leaf.f_lineno} {leaf.f_code.co_name}"


class StackSampler:
    def __init__(self, every_s: float = 0.02):
        self.every_s = every_s
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.every_s):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    group = re.sub(r"\d+", "", names.get(ident, "?"))
                    self.counts[group][_frame_key(frame)] += 1

    def top(self, n: int = 12) -> dict:
        """Per thread group: its samples and its ``n`` most sampled lines with their share."""
        out = {}
        for group, c in sorted(self.counts.items(), key=lambda kv: -sum(kv[1].values())):
            total = sum(c.values())
            out[group] = {"samples": total, "top": [(round(k / total, 3), key) for key, k in c.most_common(n)]}
        return out
