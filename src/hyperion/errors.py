"""Exception hierarchy: every error Hyperion raises derives from HyperionError."""

from __future__ import annotations


class HyperionError(Exception):
    """Root of all Hyperion errors; the CLI prints these without a traceback."""


class PolicyError(HyperionError):
    """A policy file is invalid; the message names each bad field and value."""


class CapacityError(PolicyError):
    """A policy has more entries than a kernel map can hold."""


class BpfError(HyperionError):
    """A libbpf or bpf() call failed; carries the errno."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class AbiError(HyperionError):
    """The compiled object's BTF lacks a type or field the control plane needs."""


class AttachError(HyperionError):
    """The XDP program could not be attached to or detached from an interface."""


class NotAttachedError(HyperionError):
    """No pinned Hyperion state exists for the interface."""


class SlowPathError(HyperionError):
    """The slow path could not be set up."""
