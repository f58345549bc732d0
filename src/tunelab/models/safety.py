"""Loading rules for model directories: weights come from safetensors unless the user opts in to pickle.

A pickle file can run arbitrary code when unpickled. tunelab writes only safetensors; a directory whose
weights exist only as pickle files (pytorch_model.bin, *.pt, ...) is refused unless `allow_pickle: true`,
and even then transformers reads them with torch's weights_only unpickler.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelab.errors import ModelError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_weights(directory: Path, allow_pickle: bool) -> None:
    files = [p for p in Path(directory).iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files) or allow_pickle:
        return
    pickled = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelError(f"{directory}: weights are pickle files ({', '.join(pickled[:3])}), which can run code "
                         "when loaded; convert them to safetensors, or set allow_pickle: true if you trust them")


def loading_kwargs(allow_pickle: bool) -> dict[str, bool]:
    """from_pretrained options: never fall back to pickle weights unless the user allowed it."""
    return {} if allow_pickle else {"use_safetensors": True}


@contextmanager
def plain_tensors_only(source: Path) -> Iterator[None]:
    """Turn torch's refusal of a pickle that holds more than tensors into a one-line ModelError."""
    try:
        yield
    except pickle.UnpicklingError as err:
        raise ModelError(f"{source}: refused a weights file that holds more than plain tensors "
                         f"({str(err).splitlines()[0]})") from None
