"""connbalance: keeps long-lived client connections evenly spread over the pods of an HA server.

Layers, each importing only those below it (checked by import-linter in ``make lint``):
``model`` <- ``ports`` <- ``planner`` <- ``controller`` <- ``prometheus`` <- ``kube`` | ``agent``
<- ``cli``.

The simulator is not part of it: ``connbalance_sim`` (its own distribution) imports this package,
and nothing here imports it, nor grpcio or matplotlib. The CLI finds ``demo`` and ``bench`` as
plugins, through the ``connbalance.commands`` entry points.
"""

__version__ = "0.1.0"
