"""The code of the benchmark and soak scripts; ``scripts/bench`` and the others only start it.

Shared pieces:

- ``env``: where the project and its virtual environment are, the environment of child
  processes (standard library only: a launcher imports it before entering the venv).
- ``project``: every name the benchmarks take from the daemon package and from ``tests/``.
- ``files``: distinct test files written at disk speed, SHA-256 of a file, a tree's files.
- ``procfs``: CPU time, children, memory and bytes read of a process, from ``/proc``.
- ``settling``: the settled start of every timed run (``tests/bench/settle.py``).
- ``smallcpu``: a small box (``--cpu-quota``: a cgroup on a share of one CPU) and a card read
  cold at its own rate (``--card-mbps``: a loop-mounted image behind a read limit).
- ``table``: the figures' tables; ``timing``: best of N, progress lines; ``cli``: arguments.

One module or package per script: ``bench/`` (scripts/bench), ``bench_targets/``
(scripts/bench-targets), ``bench_queue`` (scripts/bench-queue), ``soak`` (scripts/soak).
"""
