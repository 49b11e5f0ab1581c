"""The lifecycle's errors: each message is shown to the user as is (the CLI turns them into
`error: ...` and exit 1, never a traceback)."""


class LifecycleError(RuntimeError):
    """An operation that cannot be done."""


class PlanError(LifecycleError):
    """The spec cannot run on this engine (device it cannot provide, missing binary...)."""


class StateError(LifecycleError):
    """A state file that cannot be used: corrupt, foreign, or of another schema version; or a VM
    name that cannot name a state folder."""
