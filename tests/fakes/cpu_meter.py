"""An external power meter stand-in (none is attached to this machine): prints one
reading per line, ``<epoch seconds>,<watts>``, every 20 ms, where watts = 2 W + 10 W x
the machine's CPU utilisation over the last interval (from /proc/stat). It responds to
load as a meter on a board's supply does, so a benchmark loop shows above the idle
baseline."""

import sys
import time


def busy_total() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def main() -> None:
    last = busy_total()
    while True:
        time.sleep(0.02)
        now = busy_total()
        d_busy, d_total = now[0] - last[0], now[1] - last[1]
        last = now
        util = d_busy / d_total if d_total else 0.0
        print(f"{time.time():.6f},{2.0 + 10.0 * util:.4f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
