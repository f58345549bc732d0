"""Training data: reading, validating, fingerprinting and splitting."""

from tunelab.data.formats import (FORMATS, Format, detect_format, get_format, normalize_row, register_format,
                                  validate_row)
from tunelab.data.loading import Dataset, Validated, fingerprint, load_dataset, validate_file
from tunelab.data.rows import Problem, Row, read_rows
from tunelab.data.split import split_rows

__all__ = ["FORMATS", "Dataset", "Format", "Problem", "Row", "Validated", "detect_format", "fingerprint",
           "get_format", "load_dataset", "normalize_row", "read_rows", "register_format", "split_rows",
           "validate_file", "validate_row"]
