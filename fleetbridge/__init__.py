"""fleetbridge: fleet telematics and M2M connectivity clouds on MQTT, with Home Assistant discovery."""

from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
