from netinit_cli.cli import main

main()
