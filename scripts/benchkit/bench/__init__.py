"""scripts/bench: the daemon's performance goals, each beside a reference (``run`` says which).

``run`` parses the arguments and runs the scenarios: ``hashing``, ``ingest`` (and spool),
``restart``, ``latency``. Each starts the daemon (``child``) on a configuration for a synthetic
card (``card``) and reads its journal (``journal_reader``); ``harness`` holds the goals, rows
and notes, and prints the table.
"""
