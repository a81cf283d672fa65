"""CDI specs for the devices the plugin hands out (upstream writes them through nvidia-container-toolkit's nvcdi).

`spec` is the file format, `ldcache` reads the driver root's linker cache, `driver` finds the driver's files,
`generate` builds one spec per class, `store` writes them where the container runtime reads them.
"""


class CdiError(Exception):
    """A spec the plugin needs cannot be built or written: fatal at start, as upstream."""
