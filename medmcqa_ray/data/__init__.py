"""Data sources, normalisation and the download/prep stages."""
