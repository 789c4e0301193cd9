"""What a forked worker's memory figures mean once CUDA is up in the parent (issue 21: the routing stage's
sampled PSS varied from 4 to 28 GB between runs of the same code).

    python -m bench.fork_memory [--workers 4] [--alloc-mb 50]

Forks ``--workers`` processes the way the routing does (:func:`geoimplicit.cores.forked_pool`), before and after
CUDA is initialised in this process; each allocates ``--alloc-mb`` MB of its own and waits. From /proc/<pid>/smaps
of each worker: PSS, private (USS: what the worker alone holds) and the mappings that carry most of the PSS.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _hold(mb: int) -> int:
    a = np.ones(mb * 2**20 // 8)  # touched: private pages
    time.sleep(3.0)
    return int(a.size)


def _smaps(pid: int, top: int = 5) -> dict:
    """PSS and private kB of ``pid``, and its ``top`` mappings by PSS."""
    maps, name, pss, private, cur = [], "", 0, 0, {}
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                name = parts[5] if len(parts) > 5 else "[anon]"
                cur = {"name": name, "pss_kb": 0}
                maps.append(cur)
            elif parts[0] == "Pss:":
                cur["pss_kb"] = int(parts[1])
                pss += int(parts[1])
            elif parts[0] in ("Private_Clean:", "Private_Dirty:"):
                private += int(parts[1])
    maps.sort(key=lambda m: -m["pss_kb"])
    return {"pss_gb": pss / 2**20, "private_gb": private / 2**20, "top": maps[:top]}


def probe(workers: int, mb: int) -> dict:
    from bench.speed import process_tree
    from geoimplicit.cores import forked_pool

    with forked_pool(workers) as pool:
        futures = [pool.submit(_hold, mb) for _ in range(workers)]
        time.sleep(1.5)
        kids = [p for p in process_tree(os.getpid()) if p != os.getpid()]
        out = {"parent": _smaps(os.getpid()), "workers": [_smaps(k) for k in kids]}
        for f in futures:
            f.result()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--alloc-mb", type=int, default=50)
    args = ap.parse_args(argv)
    res = {"before_cuda": probe(args.workers, args.alloc_mb)}
    import torch

    if torch.cuda.is_available():
        x = torch.randn(2**26, device="cuda")  # a context, kernels, 256 MB on the device
        torch.cuda.synchronize()
        res["after_cuda"] = probe(args.workers, args.alloc_mb)
        del x
    for k, v in res.items():
        w = v["workers"]
        print(f"{k}: parent PSS {v['parent']['pss_gb']:.2f} GB; workers' PSS "
              f"{sum(x['pss_gb'] for x in w):.2f} GB, private {sum(x['private_gb'] for x in w):.2f} GB; "
              f"first worker's largest: {json.dumps(w[0]['top'][:3]) if w else '-'}")
    return res


if __name__ == "__main__":
    main()
