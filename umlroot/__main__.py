from umlroot.cli import main

main()
