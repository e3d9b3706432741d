from medpeft_cli.cli import main

main()
