"""Training data: reading, validating, fingerprinting and splitting."""

from tunelab.data.formats import FORMATS, Problem, Row, detect_format, normalize_row, read_rows, validate_row
from tunelab.data.loading import Dataset, Validated, fingerprint, load_dataset, split_rows, validate_file

__all__ = ["FORMATS", "Dataset", "Problem", "Row", "Validated", "detect_format", "fingerprint", "load_dataset",
           "normalize_row", "read_rows", "split_rows", "validate_file", "validate_row"]
