"""Filesystem images (`umlroot mkfs`): options, the plan of steps, sizes, GPT."""
