"""Launch settings for the numba.cuda kernels, kept in one place (as stumpy's ``config.py``).

Two kinds of constants live here:

* **Launch settings** (block sizes, work per thread, strip sizes) are read by the wrappers at
  every call, so a test can lower them (``monkeypatch.setattr(gpu_config, ...)``) to exercise
  block edges in the simulator, as stumpy's test.sh does. They change speed, never results.
* **Compile-time sizes** (shared-memory array shapes) are frozen into the kernels when the
  module is imported; changing them needs a fresh process.
"""

# --- launch settings (read per call) ---------------------------------------------------

# Threads per block of the 1-D kernels: tile histograms, clip/scan/LUT (one block per tile),
# the Otsu histogram and buffer zeroing. 256 = 8 warps: enough to hide latency on every
# CUDA GPU since Maxwell while leaving room for several blocks per SM. Must not exceed
# MAX_THREADS_PER_BLOCK.
THREADS_PER_BLOCK = 256

# (x, y) threads per block of the per-pixel kernels (CLAHE interpolation, binary threshold):
# 32 along x so each warp reads one contiguous row segment (coalesced).
PIXEL_BLOCK = (32, 8)

# Each thread of a per-pixel kernel walks this many rows (grid-stride), so the column
# weights and tile indices are computed once per column instead of once per pixel.
ROWS_PER_THREAD = 4

# CLAHE tile histograms: a tile is cut into horizontal strips of about this many pixels,
# one block per strip, so a coarse grid (8x8 = 64 tiles) still fills a 132-SM GPU.
# 8-bit strips write private histograms (merged by the LUT kernel, no global atomics);
# 16-bit strips add into one global histogram per tile with atomics.
HIST_PIXELS_PER_BLOCK = 16384

# Otsu histogram: each thread counts about this many pixels (grid-stride) before its block
# folds its shared histogram into the global one, i.e. one global atomic per bin per block.
OTSU_PIXELS_PER_THREAD = 32

# ... but no more blocks than this: every block adds its 256 counts into the same 256 global
# counters, so more blocks means more same-address atomics. 512 = about 4 per SM on a
# 132-SM H100, enough to keep any current GPU's SMs busy.
OTSU_MAX_BLOCKS = 512

# Stage uploads and downloads of numpy frames through a per-thread page-locked buffer.
# Pageable copies are staged by the driver anyway (in small chunks, synchronously); staging
# ourselves lets the DMA run at full PCIe/NVLink speed and be queued on the thread's stream
# behind nothing else. A frame that already lives in page-locked memory
# (``cuda_device.pinned_empty``) is copied directly. In the simulator both are plain numpy.
PINNED_STAGING = True

# Per-thread cache of device workspaces (histograms, LUTs, input buffers) keyed by shape and
# dtype: a daemon sees one frame size, so after the first frame no call allocates anything
# but its output. Oldest entries are dropped beyond this count.
WORKSPACE_CACHE_ENTRIES = 16

# Refuse CLAHE tile grids whose device histograms and LUTs would exceed this many bytes
# (a 16-bit image needs 384 KiB per tile), as the CPU kernel does.
MAX_TABLE_BYTES = 512 << 20

# --- compile-time sizes (frozen at import) ---------------------------------------------

# Size of the shared scan array of the clip/scan/LUT kernel: the largest block it accepts.
MAX_THREADS_PER_BLOCK = 1024

# 8-bit histograms in shared memory keep this many private copies; warp w counts into copy
# w % HIST_COPIES, so a flat image region (every pixel the same grey level) does not
# serialise all warps of a block on one shared-memory counter. 4 x 256 x 4 B = 4 KiB.
HIST_COPIES = 4
