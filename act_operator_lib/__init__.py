"""act-operator-lib: class-based LangGraph nodes, a cookbook of async node patterns, scaffolding.

Subclass a node class, implement ``execute``, and add an instance to a graph:

    from act_operator_lib import BaseNode, AsyncBaseNode
"""

from act_operator_lib.base_node import AsyncBaseNode, BaseNode, get_tags, get_thread_id

__all__ = ["AsyncBaseNode", "BaseNode", "get_tags", "get_thread_id"]
__version__ = "0.1.0"
