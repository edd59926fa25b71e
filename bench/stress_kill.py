"""Crash-safety stress: SIGKILL a writer process at hundreds of random moments and check that
nothing it acknowledged is lost or corrupted.

Each kill point: a child process opens the index and runs random adds, backfills, deletes,
version registrations, flushes and close/reopen cycles (batches of 32 items), logging each call
before it starts and (fsynced) after it returns; it is SIGKILLed after a random delay. The index
is then reopened as a writer and checked: every acknowledged write is there, the call in flight
is either wholly there or wholly absent, ``verify()`` finds nothing, every stored vector equals
the acknowledged one, and ``search`` equals brute force over the stored vectors. The protocol is
in ``tests/reliability/crashkit.py`` (shared with the CI test ``test_crash_safety.py``).

Run:  .venv/bin/python bench/stress_kill.py --points 300
Writes bench/results/stress_kill.json (exit status 1 when any promise broke).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "reliability"))

import crashkit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=300, help="kill points in all (default 300)")
    ap.add_argument("--register-share", type=float, default=0.15,
                    help="share of the points spent on a second index whose rounds focus on version registration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=0.8, help="longest run before the kill, seconds")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "stress_kill.json")
    ap.add_argument("--workdir", type=Path, default=None, help="where the indexes go (default: a temp folder)")
    args = ap.parse_args()

    n_reg = int(round(args.points * args.register_share))
    n_mixed = args.points - n_reg
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stress_kill-"))
    t0 = time.time()

    def progress(tag):
        def fn(point, s):
            if (point + 1) % 10 == 0:
                print(f"[{tag}] {point + 1} kill points, {s['acknowledged_writes']} acknowledged writes checked, "
                      f"{len(s['failures'])} failures, {time.time() - t0:.0f} s", flush=True)
        return fn

    mixed = crashkit.run_campaign(work / "mixed", points=n_mixed, seed=args.seed, max_delay=args.max_delay,
                                  progress=progress("mixed"))
    reg = crashkit.run_campaign(work / "register", points=n_reg, seed=args.seed + 1, max_delay=0.5,
                                focus="register", max_versions=64, progress=progress("register")) if n_reg else None
    parts = [mixed] + ([reg] if reg else [])
    kills: dict[str, int] = {}
    for p in parts:
        for k, v in p["kills_during"].items():
            kills[k] = kills.get(k, 0) + v
    out = {
        "command": " ".join([Path(sys.executable).name, "bench/stress_kill.py"] + sys.argv[1:]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": __import__("os").cpu_count()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "wall_s": round(time.time() - t0, 1),
        "kill_points": sum(p["kill_points"] for p in parts),
        "writer_processes_killed": sum(p["kill_points"] - p["child_exits_before_kill"] for p in parts),
        "kills_during": dict(sorted(kills.items(), key=lambda kv: -kv[1])),
        "acknowledged_writes_checked": sum(p["acknowledged_writes"] for p in parts),
        "acknowledged_items_written": sum(p["acknowledged_items"] for p in parts),
        "in_flight_write_committed": sum(p["in_flight_committed"] for p in parts),
        "in_flight_write_absent": sum(p["in_flight_not_committed"] for p in parts),
        "shard_rebuilds_on_reopen": sum(p["shard_rebuilds"] for p in parts),
        "oplog_replays_on_reopen": sum(p["oplog_replays"] for p in parts),
        "acknowledged_writes_lost": 0 if not any(p["failures"] for p in parts) else None,
        "failures": [f for p in parts for f in p["failures"]],
        "campaigns": {"mixed": mixed, "register": reg},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "campaigns"}, indent=1))
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
