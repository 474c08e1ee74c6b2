"""Shared pydantic building blocks of the signed ledger objects.

Field types that validate once, for every model that uses them, and a base
model whose ``from_dict`` / ``from_json`` turn validation failures into
:class:`~fedcoin.errors.InvalidInput`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidInput
from .encoding import is_hex
from .identity import check_account

TASK_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _sha256_hex(v: str) -> str:
    if not is_hex(v, 64):
        raise ValueError("must be a SHA-256 hex digest (64 lowercase hex characters)")
    return v


def _task_id(v: str) -> str:
    if not TASK_ID_RE.fullmatch(v):
        raise ValueError("task_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return v


AccountId = Annotated[str, AfterValidator(check_account)]
Sha256Hex = Annotated[str, AfterValidator(_sha256_hex)]
TaskId = Annotated[str, AfterValidator(_task_id)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class LedgerModel(BaseModel):
    """Frozen, strict, no extra fields; parse with :meth:`from_dict` / :meth:`from_json`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    what: ClassVar[str] = "object"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(f"malformed {cls.what}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise InvalidInput(f"malformed {cls.what}: {exc}") from exc
