"""An external power meter stand-in (none is attached to this machine) that does not
depend on how busy the machine is: it prints ``<epoch seconds>,<watts>`` every 20 ms,
where watts = 2 W + 10 W x the CPU time that the processes under ROOT_PID (its
descendants, not the meter itself) spent on a CPU during the interval, per second of
the interval. The benchmark agent is such a process: it sleeps through the idle window
(2 W) and computes through the timed loop (above 2 W), whatever else the machine runs,
because only the agent's own CPU time counts, read from /proc/PID/schedstat in ns.

    process_meter.py ROOT_PID
"""

import itertools
import os
import sys
import time

IDLE_W, PER_CPU_W, INTERVAL_S = 2.0, 10.0, 0.02
TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def cpu_ns(pid: int) -> int | None:
    """Time on a CPU so far, all threads; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except FileNotFoundError:
        return None
    except OSError:  # no schedstat: clock ticks from stat (utime + stime)
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int((int(fields[11]) + int(fields[12])) * TICK_NS)


def descendants(root: int, me: int) -> set[int]:
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = set(), [root]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found.add(child)
                todo.append(child)
    found.discard(me)
    return found


def main() -> None:
    root, me = int(sys.argv[1]), os.getpid()
    last: dict[int, int] = {}
    t_last = time.monotonic()
    pids: set[int] = set()
    for i in itertools.count():
        time.sleep(INTERVAL_S)
        if i % 5 == 0:  # the process tree changes rarely; reading it costs the most
            pids = descendants(root, me)
        used = 0
        seen: dict[int, int] = {}
        for pid in pids:
            now_ns = cpu_ns(pid)
            if now_ns is None:
                continue
            seen[pid] = now_ns
            used += now_ns - last.get(pid, now_ns)  # a new process counts from now on
        last = seen
        t_now = time.monotonic()
        busy = max(0, used) / 1e9 / max(t_now - t_last, 1e-6)
        t_last = t_now
        print(f"{time.time():.6f},{IDLE_W + PER_CPU_W * busy:.4f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
