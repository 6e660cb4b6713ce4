"""Results: what every command records and reports, in one place.

* :mod:`.rows`: the per-image row schema of an attack, rows from results, summaries, the
  success curve;
* :mod:`.log`: crash-safe append-only logs (fsync per append) for rows and work records;
* :mod:`.folder`: the `zoattack run --out` folder (run.json, per_image.csv, parts.jsonl,
  summary.json) with its resume and overwrite rules;
* :mod:`.tables` and :mod:`.figures`: Rich tables, JSON, PNG figures.

Above the attacks, beside the jobs (which use it), below batches and the CLI.
"""

from zoattack.results.folder import RUN_FILES, RunFolder
from zoattack.results.log import PartLog, RowLog, write_json
from zoattack.results.rows import (
    CSV_FIELDS,
    ROW_COUNTING_RULE,
    rows_of,
    success_curve,
    summarize,
    summarize_rows,
)

__all__ = [
    "CSV_FIELDS",
    "ROW_COUNTING_RULE",
    "RUN_FILES",
    "PartLog",
    "RowLog",
    "RunFolder",
    "rows_of",
    "success_curve",
    "summarize",
    "summarize_rows",
    "write_json",
]
