"""moto's S3 server on 127.0.0.1 for benchmarks (the tests have the same as a pytest fixture).

    with MotoS3(bucket="bench"):
        ... s3://bench/... now reaches the local server through boto3 ...
"""

import logging
import os


class MotoS3:
    """moto's S3 server on a free loopback port, with the AWS variables pointing boto3 at it."""

    def __init__(self, bucket: str = "bench"):
        self.bucket = bucket

    def __enter__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        self.saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        import boto3

        boto3.client("s3").create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *_):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.server.stop()
