"""umlroot's version, in a module of its own: the kernel layer records it in
the archives and wheels it writes without importing the whole package."""

__version__ = "0.1.0"
