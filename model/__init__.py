"""atomfm model stage."""
