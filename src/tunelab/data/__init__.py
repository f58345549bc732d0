"""Training data: reading, validating, fingerprinting and splitting."""

from tunelab.data.formats import FORMATS, Problem, Row, detect_format, read_rows, validate_row
from tunelab.data.loading import Dataset, fingerprint, load_dataset, split_rows

__all__ = ["FORMATS", "Dataset", "Problem", "Row", "detect_format", "fingerprint", "load_dataset",
           "read_rows", "split_rows", "validate_row"]
