import sys

from fedlora.deploy.cli import main

sys.exit(main(["client", *sys.argv[1:]]))
