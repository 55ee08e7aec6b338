from umlroot.cli.main import main

main()
