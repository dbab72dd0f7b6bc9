"""The U-Net segmentation model: contract (`contract.py`, no torch), training and export (torch)."""
