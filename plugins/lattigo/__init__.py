"""OptConnect Lattigo plugin: cellular devices and SIMs (connectivity, usage, SIM state, SMS)."""

from fleetbridge import hookimpl


@hookimpl
def fleetbridge_register_platforms(register):
    from .platform import LattigoPlatform

    register(LattigoPlatform)
