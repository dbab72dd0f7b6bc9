"""The station benchmark (`inspectd bench`, `bench/throughput.py`): the real pipeline, timed.

One module per job: `memory_source` (the camera stand-in), `station` (the daemon's pipeline
with a real journal, publisher and subscriber, fed three ways), `resources` (CPU %, peak
RSS), `peer` + `resnet_unet` + `peer_export` (the seed-style pipeline as the peer),
`accuracy` (held-out IoU beside the speed), `machine` (what it ran on), `report` and `plot`
(the outputs) and `throughput` (the command that runs it all). Importing this package never
imports torch: only `peer_export`, run as a subprocess, does.
"""
