"""otpy.observer: see a running node's supervision tree, from the same program
or from another (``python -m otpy.observer``).

Reading a node costs it one signal to its zygote per snapshot; none of its
processes is called. Only nodes of the same OS user can be read.
"""

from ._nodes import Node, NodeNotFound, find_node, list_nodes
from ._snapshot import NodeReader, ObserverError, SnapshotRow, snapshot

__all__ = ["Node", "NodeNotFound", "NodeReader", "ObserverError", "SnapshotRow", "find_node",
           "list_nodes", "snapshot"]
