"""What `telucodec submit` refuses on the laptop, before it uploads or submits anything: a run dir or
dataset in a bucket that does not exist, and (when the job would use this machine's credentials) a
prefix that holds no dataset. The address answers nothing, so reaching the cluster would fail
differently: these errors prove the check ran first."""

from audio_fixtures import make_dataset
from jobs.cli import main
from run_fixtures import OFF_CLOUD

NOWHERE = "http://127.0.0.1:9"


def submit_words(data: str, runs: str, *more: str) -> list[str]:
    return ["submit", "--address", NOWHERE, "--runs", runs, "tiny", f"data.url={data}", *OFF_CLOUD, *more]


def test_a_missing_bucket_is_refused_before_anything_is_submitted(s3_bucket, capsys):
    make_dataset(f"{s3_bucket}/te", [4], sr=16000, seconds=0.3)
    assert main(submit_words(f"{s3_bucket}/te", "s3://no-such-bucket-telucodec/runs", "--no-forward")) == 2
    err = capsys.readouterr().err
    assert "the run dir s3://no-such-bucket-telucodec/runs/" in err and "no such bucket" in err
    assert "nothing was submitted" in err and "Ray dashboard" not in err
    assert main(submit_words("s3://no-such-bucket-telucodec/te", f"{s3_bucket}/runs", "--no-forward")) == 2
    assert "data.url s3://no-such-bucket-telucodec/te is not reachable" in capsys.readouterr().err


def test_a_prefix_without_a_dataset_is_refused_when_the_job_uses_these_credentials(s3_bucket, capsys):
    assert main(submit_words(f"{s3_bucket}/empty", f"{s3_bucket}/runs")) == 2
    err = capsys.readouterr().err
    assert f"data.url {s3_bucket}/empty is not reachable" in err and "not a dataset" in err
    # --no-forward: the cluster's own credentials may see what this machine cannot; the check passes
    # on to the cluster (whose address answers nothing here)
    assert main(submit_words(f"{s3_bucket}/empty", f"{s3_bucket}/runs", "--no-forward")) == 2
    assert "Ray dashboard" in capsys.readouterr().err
