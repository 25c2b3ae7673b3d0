from chddl_cli.app import main

main()
