"""The guest init's C sources, shipped as package data (see umlroot/guestinit.py)."""
