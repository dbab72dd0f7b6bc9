"""Prometheus metrics of the daemon, on a registry passed in (tests use a fresh one).

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> metrics = DaemonMetrics(CollectorRegistry())
    >>> metrics.verdicts.labels(result="PASS").inc()
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Stage latencies span ~1 ms (verdict) to seconds (a U-Net on a big frame).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DaemonMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.frames = Counter("inspectd_frames", "Frames (fields) analysed or refused", ["source"], registry=registry)
        self.verdicts = Counter("inspectd_verdicts", "Verdicts published, by result", ["result"], registry=registry)
        self.stage_latency = Histogram(
            "inspectd_stage_latency_seconds", "Time spent in each pipeline stage", ["stage"],
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.capture_to_publish = Histogram(
            "inspectd_capture_to_publish_seconds", "From capture (or file arrival) to publish",
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.queue_depth = Gauge("inspectd_queue_depth", "Items waiting in a pipeline queue", ["queue"],
                                 registry=registry)
        self.drops = Gauge("inspectd_source_drops", "Frames a source dropped (free-run, pipeline behind)",
                           ["source"], registry=registry)
        self.source_errors = Counter("inspectd_source_errors", "Source problems (status events of WARNING or "
                                     "worse)", ["source"], registry=registry)
        self.daemon_errors = Counter("inspectd_daemon_errors", "Daemon-level problems reported on error.<station> "
                                     "(also those held back as repeats), by kind", ["kind"], registry=registry)
        self.ready = Gauge("inspectd_ready", "1 once warm-up is done and sources run", registry=registry)

    def serve(self, host: str, port: int) -> tuple[object, int]:
        """Start the HTTP exporter; returns (server, bound port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port
