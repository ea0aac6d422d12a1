"""The stage types by name, building a stage from its TOML table, and cutting a stage list at barriers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flopwise.config_values import non_negative
from flopwise.data.stages.base import Stage
from flopwise.data.stages.dedup import ExactDedup, NearDedup
from flopwise.data.stages.normalize import Normalize
from flopwise.data.stages.pii import PII
from flopwise.data.stages.quality import C4, CodeQuality, GopherQuality, GopherRepetition, Length
from flopwise.data.stages.verify import VerifyCode
from flopwise.errors import ConfigError

STAGE_TYPES: dict[str, type[Stage]] = {
    cls.type: cls
    for cls in (
        Normalize,
        Length,
        GopherQuality,
        GopherRepetition,
        C4,
        CodeQuality,
        PII,
        ExactDedup,
        NearDedup,
        VerifyCode,
    )
}
COMMON_KEYS = ("name", "only_sources")  # every stage takes these besides its own parameters


def build_stage(type_: str, params: dict, where: str = "stage") -> Stage:
    """The stage of type `type_` with `params` (a [[stages]] table without `type`), checked: an unknown
    type, an unknown key or a value of the wrong type is a ConfigError naming it."""
    cls = STAGE_TYPES.get(type_)
    if cls is None:
        raise ConfigError(f"{where}.type = {type_!r}: must be one of {', '.join(STAGE_TYPES)}")
    params = dict(params)
    name = params.pop("name", type_)
    only = params.pop("only_sources", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name = {name!r}: must be a non-empty string")
    if only is not None and (not isinstance(only, list) or not all(isinstance(s, str) for s in only)):
        raise ConfigError(f"{where}.only_sources = {only!r}: must be a list of source names")
    unknown = set(params) - set(cls.defaults)
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{sorted(unknown)[0]} for stage {type_} "
            f"(allowed: {', '.join(sorted(cls.defaults) + list(COMMON_KEYS))})"
        )
    for k, v in params.items():
        d = cls.defaults[k]
        ok = (
            isinstance(v, bool)
            if isinstance(d, bool)
            else (isinstance(v, int | float) and not isinstance(v, bool))
            if isinstance(d, int | float)
            else isinstance(v, type(d))
        )
        if not ok:
            raise ConfigError(
                f"{where}.{k} = {v!r}: must be of type {type(d).__name__} like the default {d!r}"
            )
        if isinstance(d, int | float) and not isinstance(d, bool):  # every numeric parameter is a size,
            non_negative(f"{where}.{k}", v)  # a count, a limit or a fraction: finite and >= 0
    try:
        return cls(name, only, **params)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Segment:
    """A run of per-document stages followed by the barriers (dedup stages) that end it. Indices are
    positions in the pipeline's stage list."""

    index: int
    stages: range  # per-document stages: run unit by unit
    barriers: range  # dedup stages: signatures per unit, then one reduce over all units


def segments(types: Sequence[str]) -> list[Segment]:
    """Cut a stage list (by type) into segments at its barriers. There is always at least one segment."""
    bounds: list[list[int]] = [[0, 0, 0]]  # per segment: first stage, first barrier, end
    for i, t in enumerate(types):
        if STAGE_TYPES[t].barrier:
            bounds[-1][2] = i + 1
        else:
            if bounds[-1][2] > bounds[-1][1]:  # the segment already has barriers: start a new one
                bounds.append([i, i, i])
            bounds[-1][1] = bounds[-1][2] = i + 1
    return [Segment(k, range(a, b), range(b, c)) for k, (a, b, c) in enumerate(bounds)]
