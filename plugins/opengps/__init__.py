"""Tracker Open API (Protrack365 family) plugin: GPS trackers, engine relay, door lock, alarms."""

from fleetbridge import hookimpl


@hookimpl
def fleetbridge_register_platforms(register):
    from .platform import OpenGpsPlatform

    register(OpenGpsPlatform)
