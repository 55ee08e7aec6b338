"""umlroot's UML kernel: build it from source, cache it, find it, probe it.

`umlroot.kernel.select.find_kernel()` is what `umlroot run` calls.
"""
