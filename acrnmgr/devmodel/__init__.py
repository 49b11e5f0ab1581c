"""Embedded virtio device model: transport (vhost-user), core (virtqueues), device types."""
