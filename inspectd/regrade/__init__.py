"""`inspectd regrade`: the station's analysis run over an archive of micrographs on Ray.

The job is the same `Analyzer` as `inspectd analyze` and the daemon (decode -> preprocess ->
segment -> measure -> verdict), run by Ray Data `map_batches` with a pool of actors that each
load the engine once. One module per step, in the order a run takes them:

- `inputs`: folders, glob patterns and manifests (CSV or Parquet) -> the list of files, with
  part and lot where a manifest gives them;
- `keys`: the run's identity, (config hash, model hash); with a file's sha256 it keys every row;
- `store`: the Parquet dataset (`frames/`, `regions/`): rows from analysis results, atomic
  batch files named by their inputs (a retried batch rewrites the same file), what is done
  already, and the clean-up that keeps every input in exactly one row after a kill;
- `job`: the Ray side (a local Ray by default, or a cluster), the worker class and the
  progress bar; the only module that imports ray;
- `diff`: the re-graded verdicts against a station's journal(s): flips, metric deltas and
  per-lot statistics as JSON, Markdown and HTML.
"""
