"""CJ/T 188-2004 heat meters (household heat and cooling meters on RS-485 or M-Bus levels)."""
