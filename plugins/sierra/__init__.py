"""Sierra Wireless plugins: ``amm`` (AirLink Mobility Manager) and ``airvantage`` (AirVantage cloud).

Both platforms share the OAuth 2 client (:mod:`.oauth`), the REST layer (:mod:`.rest`), the clock
abstraction (:mod:`.clock`) and the simulator scaffolding (:mod:`.sim_common`). The entry points are
the modules :mod:`.amm` and :mod:`.airvantage`, each carrying its own ``fleetbridge_register_platforms``.
"""
