"""The one base of every error a user can cause and fix: bad input, a missing file, a run dir that
holds another run. The command line catches `TelucodecError` and prints its message as one line
(`telucodec: error: ...`, exit status 2); anything else is a bug and keeps its traceback.

    class ConfigError(TelucodecError, ValueError): ...     # each module's own, named for what failed
"""

from __future__ import annotations


class TelucodecError(Exception):
    """A problem the user can fix; its message is one line saying what is wrong and how to go on."""


def environment_problem(e: BaseException) -> str | None:
    """One line for an error the machine or the cloud raised on the user's behalf (no credentials,
    an unreachable endpoint, a refused request, a path that cannot be written), naming what failed
    and the likely fix; None for anything else (a bug keeps its traceback)."""
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - boto3 is a dependency
        boto = None
    if boto is not None:
        if isinstance(e, boto.NoCredentialsError):
            return ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                    "AWS_PROFILE), or run where an instance role grants S3 access")
        if isinstance(e, boto.EndpointConnectionError):
            return (f"cannot reach the S3 endpoint {e.kwargs.get('endpoint_url', '')}: check "
                    "AWS_ENDPOINT_URL and the network")
        if isinstance(e, boto.ClientError):
            err = e.response.get("Error", {})
            return (f"S3 refused {e.operation_name} ({err.get('Code', '?')}: {err.get('Message', '')}): check "
                    "the credentials, the bucket name and its policy")
        if isinstance(e, boto.BotoCoreError):
            return f"S3 request failed: {e}"
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return None
