from vlpeft.cli import main

main()
