"""Stage 1: raw structure files → validated records → webdataset shards → packed graph batches."""

from data_pipeline.schema import DOMAINS, BadInputError, Structure, validate

__all__ = ["DOMAINS", "BadInputError", "Structure", "validate"]
