"""An Airflow 3 DAG bundle backed by dagsnap snapshots.

    [dag_processor]
    dag_bundle_config_list = [{"name": "dags", "classpath": "dagsnap_airflow.DagsnapBundle",
                               "kwargs": {"root": "/opt/airflow/dags"}}]

See ``dagsnap_airflow.bundle`` and the project's docs/operations.md ("Airflow").
"""

from dagsnap_airflow.bundle import DagsnapBundle, SnapshotGone

__all__ = ["DagsnapBundle", "SnapshotGone"]
