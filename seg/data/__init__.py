"""BraTS data: find and check cases (`cases`), the 8-step preprocessing and its inverse
(`prep`, `inverse`; `prep_folder` runs it over a folder), the prepared `.pt` store (`store`),
synthetic cases (`synth`), train/val/test and k-fold splits (`splits`) and a Markdown summary
(`summary`).

Submodules are imported on use; this package imports nothing heavy.
"""
