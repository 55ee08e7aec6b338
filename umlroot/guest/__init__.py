"""One booted guest: its config, the UML process, the control channel, command sessions,
disks, --state, writeback and the network."""
