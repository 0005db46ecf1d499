"""Entry point for spark-submit / Dataproc / EMR: ``run_score_batch.py score-batch ...``.

spark-submit runs a Python file, not a console script; this file hands its arguments to
the ``vitalcast`` command (the vitalcast wheel must be installed on the cluster).
"""

from __future__ import annotations

from vitalcast.cli import main

if __name__ == "__main__":
    main()
