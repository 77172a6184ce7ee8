"""scripts/bench-targets: upload rates of the HTTP targets beside references (``run`` says which).

``run`` parses the arguments and runs the ``groups``: per target (``nodeodm``, ``pix4dcloud``,
``webodm``, each starting its local server and clients) and scenario, the steps of a run on
the ``data`` files. ``uploads`` sends as the engine does; ``tools`` runs the servers and
reference tools; ``results`` holds the samples, the meter and the table.
"""
