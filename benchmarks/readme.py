"""`make readme`: run `make demo` in this checkout and write what it printed into
README.md between the demo markers, stamped with the commit, machine, CPU flags and how
long the run took. The README's figures are then what a run of this code gave here.

    python -m benchmarks.readme            # runs make demo (about 6 min on 2 cores)
    python -m benchmarks.readme --no-run   # rewrites the block from out/demo as it is
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import stamp

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- make readme: start -->", "<!-- make readme: end -->"
REPORTS = ("out/demo/host/report.json", "out/demo/rk3588/report.json")


def block(seconds: float | None) -> str:
    """The summary of the demo's two reports, as `edgecompress summary` prints it."""
    printed = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "edgecompress"), "summary", *REPORTS],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    s = stamp()
    took = f"; `make demo` took {seconds / 60:.1f} min (venv already made)" if seconds else ""
    return (
        f"{START}\n"
        f"Written by `make readme` at commit {s['commit']} ({s['when']}) on {s['machine']}; "
        f"CPU flags {s['cpu_flags']}{took}.\n\n"
        f"```\n{printed}\n```\n"
        f"{END}"
    )


def main(argv: list[str]) -> int:
    seconds = None
    if "--no-run" not in argv:
        start = time.perf_counter()
        subprocess.run(["make", "demo"], cwd=ROOT, check=True)
        seconds = time.perf_counter() - start
    text = README.read_text()
    pattern = re.compile(rf"{re.escape(START)}.*?{re.escape(END)}", re.S)
    if not pattern.search(text):
        print(f"README.md has no {START} ... {END} block to write", file=sys.stderr)
        return 2
    README.write_text(pattern.sub(lambda _m: block(seconds), text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
