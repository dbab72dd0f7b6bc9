"""One frame to one verdict, the same on the line and offline: decode -> preprocess (enhance)
-> engine (segment) -> measure -> verdict, plus confidence and out-of-distribution checks.

`analyzer.Analyzer` runs the whole chain. Nothing here knows about the daemon, the wire or
the web UI: the daemon, `inspectd analyze`, the UI and batch re-grading all call it.
"""
