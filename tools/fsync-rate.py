#!/usr/bin/env python3
"""Measures this machine's disk as the embedded bus uses it: one 8 KiB write + fsync at a
time, for --seconds, printing per second how many completed and how many took over 5 ms.

A cloud disk often allows a burst of fsyncs and then throttles; the embedded bus's commit
latency (and so publish→applied p99) follows it. Run it in the directory whose disk you
want to measure (the bus lives in [bus] data_dir):

    python3 tools/fsync-rate.py [--seconds 14] [--dir .]
"""
import argparse
import os
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seconds", type=float, default=14.0, help="how long to run (default 14)")
parser.add_argument("--dir", default=".", help="directory to write the test file in (default .)")
args = parser.parse_args()

path = os.path.join(args.dir, ".fsync-rate-test")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    block = b"x" * 8192
    start = time.monotonic()
    second, done, slow, worst = 0, 0, 0, 0.0
    print("second  fsyncs  over-5ms  slowest-ms")
    while True:
        t = time.monotonic()
        if t - start >= args.seconds:
            break
        os.write(fd, block)
        os.fsync(fd)
        took = time.monotonic() - t
        done += 1
        slow += took > 0.005
        worst = max(worst, took)
        now = int(time.monotonic() - start)
        if now != second:
            print(f"{second:6d}  {done:6d}  {slow:8d}  {worst * 1000:10.1f}")
            second, done, slow, worst = now, 0, 0, 0.0
finally:
    os.close(fd)
    os.unlink(path)
