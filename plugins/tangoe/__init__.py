"""Tangoe Mobile Procurement (MobProc) plugin: company handsets, their lines and carrier orders."""

from fleetbridge import hookimpl


@hookimpl
def fleetbridge_register_platforms(register):
    from .platform import TangoePlatform

    register(TangoePlatform)
