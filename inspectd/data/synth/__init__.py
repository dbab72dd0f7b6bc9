"""Synthetic coating micrographs with exact class masks, and how close they come to real ones.

Two generators share one `SynthSample` (image, class-index mask, truth dict counted on the
mask: `sample.py`) and the object geometry (`shapes.py`):

- `generate` (v2, `lamellar.py`): bright blobs on a mottled grey lamellar matrix; the
  generator the bundled model, tests, demo and benchmarks were built on. Unchanged, byte
  for byte, for the same (size, seed, params).
- `generate_v3` (`realistic.py`, parameters in `realistic_params.py`): grounded in real
  micrographs: large grainy particles with dark outlines in a high-contrast streaky
  lamellar matrix, with wide domain randomisation (`vary_realistic`) for training.

`write_dataset(..., generator="v2"|"v3")` writes either (`dataset.py`); `compare.py`
measures how far each generator's frames are from real ones (`inspectd synth --compare`).

>>> from inspectd.data import synth
>>> synth.generate(32, 32, seed=0).image.shape, synth.generate_v3(32, 32, seed=0).image.shape
((32, 32), (32, 32))
"""

from inspectd.data.synth.dataset import GENERATORS, write_dataset
from inspectd.data.synth.lamellar import GENERATOR_VERSION, SynthParams, generate
from inspectd.data.synth.realistic import REALISTIC_GENERATOR_VERSION, generate_v3
from inspectd.data.synth.realistic_params import RealisticParams, vary_realistic
from inspectd.data.synth.sample import SynthSample

__all__ = [
    "GENERATORS",
    "GENERATOR_VERSION",
    "REALISTIC_GENERATOR_VERSION",
    "RealisticParams",
    "SynthParams",
    "SynthSample",
    "generate",
    "generate_v3",
    "vary_realistic",
    "write_dataset",
]
