"""The guest init's C sources, shipped as package data (built by umlroot/kernel/guest_init.py)."""
