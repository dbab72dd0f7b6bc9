"""Tuning constants for the numba CPU kernels, kept in one place (as stumpy's ``config.py``).

Changing a value here changes speed, never results, except where a comment says otherwise.
Most are read by the Python wrappers on every call. The two CLAHE_WEIGHT_BITS values are
frozen into the compiled kernels, and numba's on-disk cache only re-checks a kernel's own
source file: after changing them, delete ``kernels/__pycache__/*.nbi`` and ``*.nbc``.
"""

# Bits of the fixed-point interpolation weights used by CLAHE. With 11 bits the worst-case
# deviation from OpenCV's float32 interpolation before rounding is 255 / 2**11 = 0.125 grey
# levels for 8-bit images, so results stay within one level of OpenCV. 8-bit blends then
# fit int32: 255 * 2**11 * 2**11 < 2**31. (Affects results by at most one level.)
CLAHE_WEIGHT_BITS_8U = 11

# 16-bit CLAHE interpolates in int64 with this many weight bits per axis:
# 65535 / 2**20 < 0.0001 levels of error, 65535 * 2**40 < 2**63.
CLAHE_WEIGHT_BITS_16U = 20

# 8-bit CLAHE folds the four LUTs around each column segment into one table per image row
# ((tiles_x + 1) * 512 vectorised multiply-adds) so each pixel then needs 2 table look-ups
# instead of 4. That pays while the tables are small next to the row: used when
# (tiles_x + 1) * 256 <= ratio * width, else the four-look-up path runs.
CLAHE_ROW_BLEND_MAX_RATIO = 4.0

# Images with fewer pixels run on the calling thread alone (see kernels/_threads.py): the
# work takes tens of microseconds, a parallel region's wake-up and join can take more.
PARALLEL_MIN_PIXELS = 1 << 16

# Rows per parallel work item in row-parallel passes. Large enough to amortise the
# per-band set-up (one blended LUT buffer, running window sums), small enough that two
# threads get balanced work on a 1024-row image.
ROW_BAND_ROWS = 32

# Otsu's histogram splits the image into one chunk per thread, but none smaller than
# this: below it, starting a thread costs more than counting the pixels.
OTSU_MIN_CHUNK_PIXELS = 1 << 16

# The CLAHE histogram pass splits each tile into horizontal strips so a 1x1 or 2x2 grid
# still feeds every thread: it aims for this many work items per available thread.
HIST_WORK_ITEMS_PER_THREAD = 4

# 8-bit tile histograms count into 4 interleaved lanes (3 KiB more per work item) when a
# tile has at least this many pixels; smaller tiles finish before lanes pay off.
CLAHE_LANES_MIN_TILE_AREA = 4096

# Refuse tile grids whose histograms and LUTs would exceed this many bytes: a 16-bit
# image needs 384 KiB per tile (a 64x64 grid would ask for 1.5 GiB).
CLAHE_MAX_TABLE_BYTES = 512 << 20
