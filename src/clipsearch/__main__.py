from clipsearch.cli.main import main

main()
