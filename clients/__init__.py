"""Client library and the ``ssr`` command line for actor systems."""
