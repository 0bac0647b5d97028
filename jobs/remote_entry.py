"""A submitted job's entry point on the cluster: load the forwarded credentials, then train.

    python -m jobs.remote_entry .telucodec_job.yaml      # what `telucodec submit` runs

`telucodec submit` stages the resolved config and a secrets file in the job's working dir; the
secrets become environment variables of this driver (and of the Ray workers it starts, which
inherit the driver's job environment). Only their names are printed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from jobs.submit import SECRETS_FILE


def load_forwarded_secrets(folder: Path = Path(".")) -> list[str]:
    """Set the variables in SECRETS_FILE (if any); returns their names."""
    path = folder / SECRETS_FILE
    if not path.is_file():
        return []
    values = json.loads(path.read_text(encoding="utf-8"))
    os.environ.update(values)
    return sorted(values)


def main(argv: list[str]) -> int:
    from jobs.cli import main as cli_main

    names = load_forwarded_secrets()
    print(f"forwarded from the submitting machine: {', '.join(names) or 'no credentials'} (values not shown)",
          flush=True)
    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
