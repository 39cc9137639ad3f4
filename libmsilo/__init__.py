"""libmsilo: the SIP msilo offline-message store as a sans-I/O Python library."""
