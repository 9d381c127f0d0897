"""Subprocess entry points, one module per system: ``python -m bench.runners.<system>``.

Every runner takes ``MODE SPEC_JSON`` on its command line, prints ``READY`` when it waits
for the harness, reads ``go`` on stdin when told to, and ends with one ``RESULT {json}``
line on stdout. Each system's work runs in its own process so that the process CPU time
it reports is that system's alone.
"""
