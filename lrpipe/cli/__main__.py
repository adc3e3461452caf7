from lrpipe.cli import main

main()
