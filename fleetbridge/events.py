"""The cross-vendor event vocabulary (Traccar's alarm names are the model)."""

from __future__ import annotations

#: Every event type a plugin may emit. Vendors map their own codes onto these; the vendor's own
#: code and name travel in the event payload (``vendor_code``, ``vendor_name``).
EVENT_TYPES: tuple[str, ...] = (
    "general", "sos", "vibration", "movement", "overspeed", "lowBattery", "lowPower", "powerCut",
    "powerOff", "powerOn", "powerRestored", "geofenceEnter", "geofenceExit", "door", "doorOpen",
    "doorClose", "ignitionOn", "ignitionOff", "tow", "jamming", "tampering", "removing", "accident",
    "fallDown", "idle", "parking", "hardAcceleration", "hardBraking", "hardCornering",
    "fatigueDriving", "fuelLeak", "fuelTheft", "lowFuel", "temperature", "lowTemperature",
    "highTemperature", "tirePressure", "tireTemperature", "gpsLost", "gpsRestored", "fault",
    "route", "restrictedDriving", "dumpOn", "dumpOff", "armed", "rollover", "deviceOffline",
    "deviceOnline", "simSuspended", "simRestored", "usageLimit", "orderCreated", "orderShipped",
    "orderCompleted", "orderCancelled", "commandResult",
)
