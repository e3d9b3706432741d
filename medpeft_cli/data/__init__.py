"""Datasets: the registry (datasets.yaml), one loader per source kind, fixed splits, subsets.

Everything here is numpy only: images stay uint8 and are normalised on the device by train/.
"""

from .bundle import DatasetBundle, Split
from .load import default_data_dir, load_dataset
from .registry import DatasetEntry, MedMNISTEntry, SyntheticEntry, get_dataset_entry, list_datasets
from .sampling import stratified_subset

__all__ = [
    "DatasetBundle",
    "DatasetEntry",
    "MedMNISTEntry",
    "Split",
    "SyntheticEntry",
    "default_data_dir",
    "get_dataset_entry",
    "list_datasets",
    "load_dataset",
    "stratified_subset",
]
