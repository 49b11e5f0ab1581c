"""Embedded virtio device model: transport (vhost-user), core (virtqueues), device types."""

from .compiled import use_source_when_needed

use_source_when_needed()  # before any module of the compiled group is imported (see compiled.py)
