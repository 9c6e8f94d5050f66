"""The base of every config section: unknown keys are errors, assignments are checked, numbers are finite, paths
are never empty."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _not_empty(value):
    # Path("") is ".": an empty setting would quietly mean "the folder the service was started in".
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty (give a path, or leave the key out for its default)")
    return value


FilePath = Annotated[Path, BeforeValidator(_not_empty)]


class Section(BaseModel):
    # coerce_numbers_to_str: APPLIANCE_CAMERA__SOURCE=0 (a device index) arrives as the number 0.
    # allow_inf_nan=False: `inf` and `nan` are valid TOML floats that no timer, byte count or backoff can use.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True,
                              allow_inf_nan=False)
