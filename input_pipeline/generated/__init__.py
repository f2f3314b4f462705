"""Datasets generated on the machine (nothing downloaded) and stand-ins for tests."""
