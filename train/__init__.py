"""atomfm train stage."""
