"""The otpy pytest plugin (installed with the package) does the per-test leak
check; tests import their shared bodies from helpers.py and servers.py."""
