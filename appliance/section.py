"""The base of every config section: unknown keys are errors, assignments are checked."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # coerce_numbers_to_str: APPLIANCE_CAMERA__SOURCE=0 (a device index) arrives as the number 0.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)
