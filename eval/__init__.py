"""atomfm eval stage."""
