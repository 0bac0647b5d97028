"""A submitted job's entry point on the cluster: claim the forwarded credentials, then train.

    python -m jobs.remote_entry [--credentials gcs://_telucodec_secrets_….zip] .telucodec_job.yaml

`telucodec submit` stages the resolved config in the job's working dir and, when it forwards
credentials, names their package in the GCS store (jobs/credentials.py). This driver claims them
(reading and deleting the package), so they become its environment variables and, through the
job's Keeper actor, every Ray Train worker's. Only their names are printed.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    from jobs.cli import main as cli_main

    names: list[str] = []
    if argv[:1] == ["--credentials"]:
        names, argv = claim_credentials(argv[1]), argv[2:]
    print(f"forwarded from the submitting machine: {', '.join(names) or 'no credentials'} (values not shown)",
          flush=True)
    return cli_main(["train", *argv])


def claim_credentials(uri: str) -> list[str]:
    """Join the job's cluster and claim the package (names returned, values set in os.environ)."""
    import ray

    from jobs.credentials import CredentialsError, claim

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
    try:
        return claim(uri)
    except CredentialsError as e:
        print(f"telucodec: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
