"""act-operator-lib: class-based LangGraph nodes, a cookbook of async node patterns, scaffolding.

Subclass a node class, implement ``execute``, and add an instance to a graph:

    from act_operator_lib import BaseNode, AsyncBaseNode

Run an async graph from sync code, watch the nodes, catch those that block the loop:

    from act_operator_lib import BlockingDetector, metrics, run_sync
"""

from act_operator_lib import metrics
from act_operator_lib.base_node import AsyncBaseNode, BaseNode, get_tags, get_thread_id
from act_operator_lib.blocking import BlockingDetector
from act_operator_lib.sync import BackgroundLoop, run_sync

__all__ = [
    "AsyncBaseNode",
    "BackgroundLoop",
    "BaseNode",
    "BlockingDetector",
    "get_tags",
    "get_thread_id",
    "metrics",
    "run_sync",
]
__version__ = "0.1.0"
