from pressa.cli import main

main()
