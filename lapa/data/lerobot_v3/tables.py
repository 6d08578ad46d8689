"""The parquet tables of a LeRobot v3.0 dataset: frames, episodes, tasks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa

from lapa.data.lerobot_v3.layout import ACTION_KEY, AUTO_FEATURES, STATE_KEY
from lapa.data.lerobot_v3.stats import STAT_ORDER


def _list_of(inner: pa.DataType) -> pa.DataType:
    # lerobot's files (written through `datasets`) name list children "element", not "item"
    return pa.list_(pa.field("element", inner))


def _fixed_list(values: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, type=pa.list_(pa.field("element", pa.float32()), dim))


def data_table(columns: dict[str, np.ndarray], state_dim: int, action_dim: int) -> pa.Table:
    arrays = {
        STATE_KEY: _fixed_list(columns[STATE_KEY], state_dim),
        ACTION_KEY: _fixed_list(columns[ACTION_KEY], action_dim),
    }
    for name, (_, arrow_type) in AUTO_FEATURES.items():
        arrays[name] = pa.array(columns[name], type=arrow_type)
    # What `datasets` stores so that `datasets.Dataset.from_parquet` restores the features.
    float_value = {"dtype": "float32", "_type": "Value"}
    hf_features: dict[str, Any] = {
        STATE_KEY: {"feature": float_value, "length": state_dim, "_type": "List"},
        ACTION_KEY: {"feature": float_value, "length": action_dim, "_type": "List"},
    }
    for name, (dtype, _) in AUTO_FEATURES.items():
        hf_features[name] = {"dtype": dtype, "_type": "Value"}
    digest = hashlib.sha256()
    for name in (STATE_KEY, ACTION_KEY, "index"):
        digest.update(np.ascontiguousarray(columns[name]).tobytes())
    hf = {"info": {"features": hf_features}, "fingerprint": digest.hexdigest()[:16]}
    table = pa.table(arrays)
    return table.replace_schema_metadata({"huggingface": json.dumps(hf)})


def episodes_table(
    rows: list[dict[str, Any]],
    stats: list[dict[str, dict[str, np.ndarray]]],
    features: list[str],
    video_keys: list[str],
) -> pa.Table:
    fields: list[pa.Field] = [
        pa.field("episode_index", pa.int64()),
        pa.field("tasks", _list_of(pa.string())),
        pa.field("length", pa.int64()),
        pa.field("data/chunk_index", pa.int64()),
        pa.field("data/file_index", pa.int64()),
        pa.field("dataset_from_index", pa.int64()),
        pa.field("dataset_to_index", pa.int64()),
    ]
    for key in video_keys:
        fields += [
            pa.field(f"videos/{key}/chunk_index", pa.int64()),
            pa.field(f"videos/{key}/file_index", pa.int64()),
            pa.field(f"videos/{key}/from_timestamp", pa.float64()),
            pa.field(f"videos/{key}/to_timestamp", pa.float64()),
        ]
    columns: dict[str, list[Any]] = {f.name: [row[f.name] for row in rows] for f in fields}
    image_type = _list_of(_list_of(_list_of(pa.float64())))  # (3, 1, 1)
    for feature in features:
        for stat in STAT_ORDER:
            if stat == "count":
                arrow_type = _list_of(pa.int64())
            else:
                arrow_type = image_type if feature in video_keys else _list_of(pa.float64())
            name = f"stats/{feature}/{stat}"
            fields.append(pa.field(name, arrow_type))
            columns[name] = [s[feature][stat].tolist() for s in stats]
    for name in ("meta/episodes/chunk_index", "meta/episodes/file_index"):
        fields.append(pa.field(name, pa.int64()))
        columns[name] = [0] * len(rows)
    schema = pa.schema(fields)
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in fields}, schema=schema)


def tasks_table(tasks: list[str]) -> pa.Table:
    """task_index + task, with `task` recorded as the pandas index like lerobot's DataFrame dump.

    pandas is not needed: this is the schema metadata pandas.DataFrame.to_parquet would write.
    """
    table = pa.table({
        "task_index": pa.array(range(len(tasks)), type=pa.int64()),
        "task": pa.array(tasks, type=pa.string()),
    })
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{
            "name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
            "metadata": {"encoding": "UTF-8"},
        }],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.3.3",  # the version lerobot's fixture was written with
    }
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
