"""Genome task registry and data loading (see docs/DESIGN.md, "Data")."""

from lingo_core.data.errors import DataError
from lingo_core.data.loading import DataOverlapWarning, load_split, load_task
from lingo_core.data.task import (
    TaskRegistry,
    TaskSpec,
    UnknownTaskError,
    default_data_root,
    default_description,
    default_label_names,
)

__all__ = [
    "DataError",
    "DataOverlapWarning",
    "TaskRegistry",
    "TaskSpec",
    "UnknownTaskError",
    "default_data_root",
    "default_description",
    "default_label_names",
    "load_split",
    "load_task",
]
