"""Not shipped in the operator image: the Kubernetes API emulator and ``continuum demo``.

Installed with the ``demo`` (or ``dev``) extra, which brings kmock. The runtime packages
(``continuum.*``) never import this package (an import-linter contract); ``continuum demo`` loads it
lazily and says which extra to install when it is missing.
"""
