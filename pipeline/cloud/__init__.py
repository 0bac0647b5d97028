"""Clouds behind one registry: each provider is one module (metadata reads, instance lookup,
preemption notice, fake metadata answers for drills and tests)."""
