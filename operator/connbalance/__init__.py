"""connbalance: keeps long-lived client connections evenly spread over the pods of an HA server.

Layers, each importing only those below it (checked by import-linter in ``make lint``):
``model`` <- ``ports`` <- ``planner`` <- ``controller`` <- adapters (``prometheus``, ``scrape``)
<- ``kube`` | ``agent`` <- ``sim`` <- ``cli``.
"""

__version__ = "0.1.0"
