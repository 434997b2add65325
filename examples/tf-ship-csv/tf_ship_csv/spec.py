"""What tf-ship's command line needs to know about the CSV backend: flags, variables, TOML keys.

Registered under the entry-point group ``tf_ship.specs``. It imports only the spec classes, so
that ``tf-ship --help`` stays fast (the backend itself is imported when ``--backend csv`` is
chosen)::

    tf-ship --logdir run1 --backend csv --csv-path metrics.csv
    TF_SHIP_CSV_PATH=metrics.csv tf-ship --logdir run1 --backend csv
    tf-ship watch runs --backend csv --csv-path out     # out/<folder>.csv for each log
"""

from __future__ import annotations

from tf_ship.backends.spec import BackendOption, BackendSpec, PerLogOutput

SPEC = BackendSpec(
    name="csv",
    factory="tf_ship_csv:CsvBackend",
    options=(
        BackendOption(
            "--csv-path",
            "path",
            "File the csv backend appends rows to [default: metrics.csv].",
            metavar="PATH",
            per_log=PerLogOutput(suffix=".csv", required=True),
        ),
    ),
)
