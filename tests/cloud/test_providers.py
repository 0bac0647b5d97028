"""Every registered cloud, tested the same way against the fake metadata service on 127.0.0.1:
what it says about the instance, no notice until one is announced, then the notice, through the
same PreemptionWatcher training runs."""

from __future__ import annotations

import json
import time

import pytest

from jobs.launch.preemption import PreemptionWatcher, SigtermClock
from pipeline.cloud import PROVIDERS, metadata_endpoints, preemption_notice, this_instance
from pipeline.cloud.fake import MetadataServer
from pipeline.config import DEFAULT_ENDPOINTS, ConfigError, PreemptConfig

INSTANCE_FACTS = {
    "aws": ({"/latest/meta-data/instance-type": "g5.xlarge", "/latest/meta-data/placement/region": "eu-west-1",
             "/latest/meta-data/instance-life-cycle": "spot"}, ("g5.xlarge", "eu-west-1", True)),
    "gcp": ({"/computeMetadata/v1/instance/machine-type": "projects/1/machineTypes/a2-highgpu-1g",
             "/computeMetadata/v1/instance/zone": "projects/1/zones/us-central1-a",
             "/computeMetadata/v1/instance/scheduling/provisioning-model": "SPOT"}, ("a2-highgpu-1g", "us-central1", True)),
    "azure": ({"/metadata/instance/compute": json.dumps({"vmSize": "Standard_NC4as_T4_v3", "location": "eastus",
                                                        "priority": "Spot"})},
              ("Standard_NC4as_T4_v3", "eastus", True)),
}
SOURCES = {"aws": "aws-spot", "gcp": "gcp", "azure": "azure"}


def only(name: str, url: str) -> dict[str, str]:
    return {**{n: "" for n in PROVIDERS}, name: url}


def test_the_config_knows_exactly_the_registered_clouds():
    assert set(DEFAULT_ENDPOINTS) == set(PROVIDERS) == set(INSTANCE_FACTS)
    with pytest.raises(ConfigError, match="preempt.endpoints: unknown cloud oracle"):
        PreemptConfig(endpoints={"oracle": "auto"})
    assert PreemptConfig(endpoints={"azure": ""}).endpoints == {**DEFAULT_ENDPOINTS, "azure": ""}


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_a_cloud_reads_its_instance_from_its_metadata(name):
    answers, expected = INSTANCE_FACTS[name]
    with MetadataServer(answers) as server:
        info = this_instance(only(name, server.url))
    assert (info.cloud, info.instance_type, info.region, info.spot) == (name, *expected)


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_a_cloud_shows_a_notice_only_once_announced(name):
    with MetadataServer() as server:
        urls = metadata_endpoints(only(name, server.url))
        assert urls == {name: server.url}
        assert preemption_notice(urls) is None
        server.notice = "2026-12-06T10:00:00Z"
        notice = preemption_notice(urls)
    assert notice is not None and notice.source == SOURCES[name]


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_the_watcher_turns_each_clouds_notice_into_a_flag(name):
    with MetadataServer() as server:
        cfg = PreemptConfig(endpoints=only(name, server.url), poll_seconds=0.05, drain_node=False)
        watcher = PreemptionWatcher(cfg, sigterm=SigtermClock()).start()
        try:
            time.sleep(0.2)
            assert watcher.poll() is None
            server.notice = "2026-12-06T10:00:00Z"
            deadline = time.monotonic() + 10
            while watcher.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            watcher.stop()
    assert watcher.poll() is not None and watcher.poll().source == SOURCES[name]


def test_auto_resolves_only_the_cloud_this_machines_dmi_data_names():
    """Off any cloud (this CI machine) 'auto' resolves to nothing, so no request is made."""
    here = {name: p.default_endpoint for name, p in PROVIDERS.items() if p.on_this_machine()}
    assert metadata_endpoints(dict(DEFAULT_ENDPOINTS)) == here
    assert metadata_endpoints({name: "" for name in PROVIDERS}) == {}


def test_a_metadata_hiccup_is_no_notice_and_no_instance():
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    assert preemption_notice({"aws": dead, "gcp": dead, "azure": dead}) is None
    assert this_instance({"aws": dead, "gcp": dead, "azure": dead}) is None
