"""The driver's watch for room to grow a shrunk elastic run (jobs.launch.trainer.CapacityWatch).

The watch reads the run's cost ledger (one line per worker group begun, with its size) from a real
run dir and each node's free resources from a function given to it (Ray's view on a cluster; the
two-node test in test_elastic.py runs it against a real one).
"""

from jobs.launch.trainer import CapacityWatch, free_workers
from pipeline.config import load_config
from pipeline.runs.cost import LEDGER
from pipeline.runs.rundir import RunDir

ONE_CPU = {"CPU": 1}


def test_free_workers_counts_whole_workers_per_node():
    assert free_workers({"a": {"CPU": 3.0}, "b": {"CPU": 0.5}}, ONE_CPU) == 3
    assert free_workers({"a": {"CPU": 8.0, "GPU": 1.0}, "b": {"CPU": 2.0}}, {"CPU": 4, "GPU": 1}) == 1
    assert free_workers({"a": {"CPU": 0.5}, "b": {"CPU": 0.5}}, ONE_CPU) == 0  # a worker sits on one node
    assert free_workers({}, ONE_CPU) == 0


def test_the_watch_asks_once_per_group_and_backs_off_when_a_request_brought_no_growth(tmp_path):
    cfg = load_config(["base"], [f"run.dir={tmp_path / 'run'}", "train.workers=4", "train.min_workers=2",
                                 "train.resize_check_s=30"])
    run = RunDir(cfg.run.dir)
    ledger = run.log(LEDGER)
    room = {"node": {"CPU": 0.0}}
    refreshed = []  # whether a grow request was already out each time Ray Train's node view was refreshed
    watch = CapacityWatch(cfg, ONE_CPU, available=lambda: room, refresh=lambda: refreshed.append(run.grow_requested()))

    def group(event: str, workers: int) -> None:
        ledger.append({"event": event, "step": 0, "workers": workers, "time": 0.0})
        ledger.append({"event": "heartbeat", "step": 0, "time": 0.0})
        ledger.flush()

    watch.check()  # no group yet
    group("start", 2)
    watch.check()
    assert not run.grow_requested()  # no room
    room["node"]["CPU"] = 1.0
    watch.check()
    assert not run.grow_requested()  # room at one check only: a node that just joined
    watch.check()
    assert run.grow_requested()
    run.clear_grow_request()
    watch.check()
    assert not run.grow_requested()  # asked already: the group is acting on it

    group("restarted", 2)  # it came back at the same size: the room was not usable
    watch.check()
    assert watch.interval == 60 and not run.grow_requested()
    watch.check()
    assert run.grow_requested()
    run.clear_grow_request()
    group("restarted", 3)
    watch.check()
    watch.check()
    assert watch.interval == 30 and run.grow_requested()  # it grew: back to the configured interval
    run.clear_grow_request()
    group("restarted", 4)
    watch.check()
    assert not run.grow_requested()  # full size
    assert refreshed == [False, False, False]  # before each of the three requests, never after


def test_the_refresh_lets_a_new_worker_group_see_a_node_that_just_joined():
    """Ray Train sizes a new elastic worker group from its AutoscalingCoordinator's node list, which
    that shared actor re-reads only every 20 s: asked within that time, it misses a node that has
    just joined (a grow request then restarts at the old size). refresh_train_node_view makes it
    re-read the nodes at once. Real two-node cluster; everything below runs within the actor's first
    20 s, before its first periodic re-read."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    from jobs.launch.ray_internals import refresh_train_node_view

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        coordinator = get_or_create_autoscaling_coordinator()

        def cpus_reserved_for_two_workers(requester: str) -> float:
            ray.get(coordinator.request_resources.remote(requester, [ONE_CPU, ONE_CPU], 60))
            reserved = ray.get(coordinator.get_reserved_resources.remote(requester))
            ray.get(coordinator.cancel_request.remote(requester))
            return sum(node.get("CPU", 0.0) for node in reserved.values())

        assert cpus_reserved_for_two_workers("before") == 1  # the head's one CPU
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert cpus_reserved_for_two_workers("stale") == 1  # the new node is not in its list yet
        refresh_train_node_view()
        assert cpus_reserved_for_two_workers("refreshed") == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
