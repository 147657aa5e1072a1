"""agentmem.policies (see ../shared/DESIGN.md; built by a later issue)."""
