"""seg: a complete 3D brain-tumour segmentation system (BraTS), usable on its own."""
