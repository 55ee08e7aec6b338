"""umlroot: a real root for one command, unprivileged, inside User Mode Linux."""

__version__ = "0.1.0"
