"""Tracker backends and the contract they implement (see `base`)."""
