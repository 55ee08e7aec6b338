#!/bin/sh
echo "umlroot demo"
