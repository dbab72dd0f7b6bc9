"""The station's runtime: wiring and start/stop order (`app`), the frame loop (`pipeline`),
the SQLite journal and its recovery, systemd notify and watchdog (`service`), metrics,
logs, the error topic and the control server."""
