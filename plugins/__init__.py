"""Built-in vendor plugins, each registered through the ``fleetbridge`` entry-point group."""
