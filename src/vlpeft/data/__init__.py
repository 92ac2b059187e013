"""Datasets, few-shot sampling, templates and image transforms."""

from vlpeft.data import coop as _coop  # noqa: F401  (registers the standard datasets)
from vlpeft.data import custom as _custom  # noqa: F401  (registers imagefolder / csv)
from vlpeft.data.base import (
    DATASETS,
    CheckReport,
    Dataset,
    DatasetSpec,
    Datum,
    get_dataset_spec,
    list_datasets,
    load_dataset,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "CheckReport",
    "Dataset",
    "DatasetSpec",
    "Datum",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
