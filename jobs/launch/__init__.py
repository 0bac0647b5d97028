"""Launching on Ray: laptop-side submission (submit), the cluster entry point (entry), the Ray Train
trainer (trainer), credential forwarding, the preemption watcher, the spot drill."""
