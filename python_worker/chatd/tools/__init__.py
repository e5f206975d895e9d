"""Tool servers the worker calls: MCP servers registered in SQL
(`chatd.mcp_servers`, `chatd mcp add`), reached with the official `mcp` SDK
over stdio or streamable HTTP (`mcp_servers.py`: connect, list tools with a
cache refreshed on `tools/list_changed`, call with a timeout, results as
text). The tool loop itself (what is committed when) is the worker's
(`chatd.worker.tools`) and SQL's (`sql/35_tools.sql`).

May import: chatd.protocol and the `mcp` SDK. Never the worker, the client,
the CLI, the LLM adapters or chatd.testing.
"""

from chatd.tools.mcp_servers import McpServer, McpSessions, McpTool, exposed_name

__all__ = ["McpServer", "McpSessions", "McpTool", "exposed_name"]
